"""Head classes: the one vocabulary of labels every protocol, scan and report uses.

Like TransformerLens' head detector, the names are a ``Literal`` type; each protocol maps its
score columns to these classes and :func:`label_heads` turns scores into labels.
"""

from __future__ import annotations

from typing import Literal, Mapping, get_args

import numpy as np
import pandas as pd

from .finite import check_finite

HeadClass = Literal["induction", "duplicate-token", "previous-token", "self", "first-token", "local", "retrieval",
                    "unclassified"]
HEAD_CLASSES: tuple[HeadClass, ...] = get_args(HeadClass)

INDUCTION: HeadClass = "induction"
DUPLICATE_TOKEN: HeadClass = "duplicate-token"
PREVIOUS_TOKEN: HeadClass = "previous-token"
SELF: HeadClass = "self"
FIRST_TOKEN: HeadClass = "first-token"
LOCAL: HeadClass = "local"
RETRIEVAL: HeadClass = "retrieval"
UNCLASSIFIED: HeadClass = "unclassified"


def flag_column(label: HeadClass) -> str:
    """The boolean column that says a head passes ``label``'s threshold: ``is_first_token``."""
    if label not in HEAD_CLASSES:
        raise ValueError(f"label must be one of {HEAD_CLASSES}, got {label!r}")
    return "is_" + label.replace("-", "_")


def label_heads(scores: pd.DataFrame, thresholds: Mapping[str, float], names: Mapping[str, HeadClass]) -> pd.DataFrame:
    """Multi-label flags (``flag_column(label)``: score >= threshold) and one primary ``label``:
    the passing class with the highest score, else ``unclassified``. ``names`` maps score columns
    to head classes. NaN or infinite scores are refused (``NonFiniteError``): a NaN head is not
    an unclassified one."""
    out = scores.copy()
    cols = list(names)
    check_finite(scores, cols, "scores to label")
    vals = scores[cols].to_numpy(dtype=float)
    passing = vals >= np.array([thresholds[c] for c in cols])
    for j, col in enumerate(cols):
        out[flag_column(names[col])] = passing[:, j]
    best = np.where(passing, vals, -np.inf).argmax(1)
    out["label"] = [names[cols[b]] if passing[i].any() else UNCLASSIFIED for i, b in enumerate(best)]
    return out
