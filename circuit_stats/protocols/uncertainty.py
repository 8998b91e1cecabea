"""Standard errors of head scores, and how far a label sits from its threshold.

Every protocol's score is a mean over a sampling unit (sequences, texts, prompts or trials). The
standard error is that of the mean over the units, from per-unit values reduced on device
(``record(per_sample=True)``): never from the attention matrix.

* Equal weights (per-text or per-prompt means, trials): ``se = std(x, ddof=1) / sqrt(n)``.
* Pooled over queries (a unit weighs by its number of queries ``w``): the mean is the ratio
  ``sum(w x) / sum(w)``, and its standard error the ratio estimator's (cluster-robust by unit):
  ``se = sqrt(n / (n - 1) * sum(w^2 (x - mean)^2)) / sum(w)``; equal weights give the first.
* A ratio of two means (``xu2026``'s selectivity ``a / b``): ``se = std(a - r b) / (sqrt(n) mean(b))``.

With one unit the standard error is undefined: NaN.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import pandas as pd
import torch

from ..finite import MARGIN_COLUMN, SE_SUFFIX
from ..labels import UNCLASSIFIED

# A label is borderline when its deciding score lies within this many standard errors of its threshold.
BORDERLINE_SE = 2.0


def se_column(column: str) -> str:
    """``induction`` -> ``induction_se``."""
    return column + SE_SUFFIX


def mean_se(values: torch.Tensor, weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over dim 0 of ``values [n, ...]`` and its standard error; with ``weights [n]`` (queries
    per unit) the pooled mean ``sum(w x) / sum(w)`` and the ratio estimator's standard error.
    Units with zero weight (or NaN values where the weight is 0) are left out."""
    x = values.to(torch.float64)
    w = torch.ones(x.shape[0], dtype=torch.float64) if weights is None else weights.to(torch.float64)
    w = w.reshape(-1, *([1] * (x.dim() - 1))).expand_as(x)
    keep = w > 0
    x = torch.where(keep, x, 0.0)
    total = (w * keep).sum(0)
    mean = (w * x).sum(0) / total
    n = keep.sum(0).to(torch.float64)
    dev = torch.where(keep, w * (x - mean), 0.0)
    se = torch.sqrt(n / (n - 1) * (dev**2).sum(0)) / total
    return mean, torch.where(n > 1, se, math.nan)


def ratio_se(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Standard error of ``mean(a) / mean(b)`` over dim 0 (``a, b [n, ...]``), by the delta method."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    r = a.mean(0) / b.mean(0)
    n = a.shape[0]
    if n < 2:
        return torch.full_like(r, math.nan)
    return (a - r * b).std(0) / (math.sqrt(n) * b.mean(0))


def margins(scores: np.ndarray, ses: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(score - threshold) / se`` elementwise: NaN where the standard error is undefined, +-inf
    where it is 0 (NaN exactly at the threshold)."""
    gap = scores - thresholds
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isnan(ses), np.nan, np.where(ses > 0, gap / ses, np.sign(gap) * np.inf))


def label_margins(df: pd.DataFrame, thresholds: Mapping[str, float], names: Mapping[str, str]) -> pd.DataFrame:
    """Add ``label_margin`` and ``is_borderline`` to a labelled frame (``label``, the score columns
    ``names`` maps to head classes, and their ``<score>_se``). The deciding score is the label's
    score column; for an unclassified head, the score closest to its threshold in standard errors.
    ``label_margin`` = (score - threshold) / se; ``is_borderline`` when ``|label_margin| <
    BORDERLINE_SE`` or the margin is undefined (NaN)."""
    cols = list(names)
    z = margins(df[cols].to_numpy(dtype=float), df[[se_column(c) for c in cols]].to_numpy(dtype=float),
                np.array([thresholds[c] for c in cols], dtype=float))
    column_of = {names[c]: j for j, c in enumerate(cols)}
    margin = [float(np.max(z[i])) if label == UNCLASSIFIED else float(z[i, column_of[label]])
              for i, label in enumerate(df["label"])]
    out = df.copy()
    out[MARGIN_COLUMN] = margin
    out["is_borderline"] = ~(np.abs(out[MARGIN_COLUMN].to_numpy(dtype=float)) >= BORDERLINE_SE)
    return out


def pooled_se(per_sample: Mapping[str, torch.Tensor], counts: Mapping[str, torch.Tensor], statistic: str) -> torch.Tensor:
    """``[layers, heads]`` standard error of a statistic pooled over queries, with each recorded row
    (sequence) as the sampling unit: ``per_sample`` and ``counts`` from ``run_batches(per_sample=True)``."""
    return mean_se(per_sample[statistic], counts[statistic])[1]
