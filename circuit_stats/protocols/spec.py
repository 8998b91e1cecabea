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

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option resolved against ``defaults``; raises before any work (no model needed)
        on an unknown key, including inside dict-valued options such as ``thresholds``, or on a
        value whose type does not match its default's."""
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown {self.name} options {unknown}; known: {sorted(self.defaults)}")
        out = dict(self.defaults)
        for key, value in options.items():
            default = self.defaults[key]
            if isinstance(default, Mapping):
                if not isinstance(value, Mapping):
                    raise TypeError(f"{self.name} option {key!r} must be a mapping like {dict(default)}, got {value!r}")
                bad = sorted(set(value) - set(default))
                if bad:
                    raise ValueError(f"unknown keys {bad} in {self.name} option {key!r}; known: {sorted(default)}")
                value = {**default, **value}
            elif default is not None and not _same_kind(value, default):
                raise TypeError(f"{self.name} option {key!r} must be {type(default).__name__}, got {value!r}")
            out[key] = value
        return out


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))
