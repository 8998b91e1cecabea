"""NaN never passes for a number: one check for every per-head or per-bin table.

A statistic or score is NaN (or infinite) when the model's activations are: NaN weights, an
fp16 overflow, a NaN embedding row for one token. Profiles, scores, scans and training monitors
refuse such a table with :class:`NonFiniteError` (a failure, recorded and counted in the exit
status) instead of pooling, labelling or plotting the NaN as if it were a number.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


class NonFiniteError(FloatingPointError):
    """Statistics or scores that are NaN or infinite (the model's activations are not finite)."""


def non_finite_rows(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Boolean per row: any of ``columns`` is NaN or +-inf."""
    if not len(columns):
        return pd.Series(False, index=df.index)
    values = df[list(columns)].to_numpy(dtype=float, na_value=np.nan)  # pd.NA (nullable floats) counts too
    return pd.Series(~np.isfinite(values).all(axis=1), index=df.index)


def check_finite(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what``, the columns and the first (layer, head) when
    any of ``columns`` holds NaN or +-inf."""
    bad = non_finite_rows(df, columns)
    if not bad.any():
        return
    rows = df[bad]
    cols = [c for c in columns if non_finite_rows(rows, [c]).any()]
    where = ""
    if {"layer", "head"} <= set(df.columns):
        first = rows.iloc[0]
        where = f", first at layer {int(first['layer'])} head {int(first['head'])}"
    raise NonFiniteError(f"{what}: {cols} are NaN or infinite in {int(bad.sum())} of {len(df)} rows{where}; "
                         "the model's activations are not finite (NaN/inf weights or embeddings, or a dtype "
                         "overflow), so these numbers cannot be pooled or labelled")


# Uncertainty columns may be NaN by definition (a standard error over one unit) or infinite (a
# label margin over a zero standard error): ``<score>_se`` and ``label_margin``.
SE_SUFFIX = "_se"
MARGIN_COLUMN = "label_margin"


def is_uncertainty_column(column: str) -> bool:
    """True for ``<score>_se`` and ``label_margin``, which the finiteness checks leave alone."""
    return column.endswith(SE_SUFFIX) or column == MARGIN_COLUMN


def float_columns(df: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """The floating-point score and statistic columns of ``df``, except ``exclude`` and the
    uncertainty columns (:func:`is_uncertainty_column`)."""
    return [c for c in df.columns
            if c not in exclude and not is_uncertainty_column(c) and pd.api.types.is_float_dtype(df[c])]
