"""What every head-scoring protocol declares, so that scoring, scans and reports need no
per-protocol special cases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import pandas as pd


@dataclass(frozen=True)
class Protocol:
    """A head-scoring protocol.

    Attributes:
        name: the name users pass (``score_heads(model, name)``, ``--protocol``).
        score: ``score(model, **options) -> DataFrame`` with one row per (layer, head).
        defaults: every option it takes, with its default.
        takes_texts: whether it scores natural text (``texts=``, ``tokenizer=``) rather than
            sequences it generates itself.
        induction_score: the column holding its per-head induction score (plots), if any.
        induction_flag: the boolean column that counts a head as an induction head (onsets).
    """

    name: str
    score: Callable[..., pd.DataFrame]
    defaults: Mapping[str, Any]
    takes_texts: bool
    induction_score: Optional[str] = None
    induction_flag: Optional[str] = None
