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
        first_token_score: the column whose threshold makes a head first-token (sink), if any
            (the scan report tests the first-token onset's change against its standard error).
        validate: checks the resolved options' values (ranges, choices) and raises a clear error
            naming the option; called by :meth:`check_options`, before any model work.
        nan_scores: score columns that are NaN by definition in some runs (retrieval's
            ``retrieval_score`` when no trial was copied); NaN in any other score column means
            the model's activations are not finite, and ``score_heads`` refuses the table.
        needs_lm_head: it reads the model's logits (generation), so it cannot score the
            transformer without its LM head (``model.base_model``).
    """

    name: str
    score: Callable[..., pd.DataFrame]
    defaults: Mapping[str, Any]
    takes_texts: bool
    induction_score: Optional[str] = None
    induction_flag: Optional[str] = None
    first_token_score: Optional[str] = None
    validate: Optional[Callable[[dict], None]] = None
    nan_scores: tuple[str, ...] = ()
    needs_lm_head: bool = False

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option resolved against ``defaults``; raises before any work (no model needed)
        on an unknown key, including inside dict-valued options such as ``thresholds``, on a
        value whose type does not match its default's, or on a value ``validate`` refuses.
        Idempotent: resolved options resolve to themselves."""
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
        if self.validate is not None:
            self.validate(out)
        return out


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


# ---------------------------------------------------------------- value checks for ``validate``
MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def require_int(options: Mapping[str, Any], key: str, low: int, high: Optional[int] = None, *,
                optional: bool = False) -> None:
    """``options[key]`` is an int in ``[low, high]`` (no upper bound for None), or None when
    ``optional``."""
    v = options[key]
    if optional and v is None:
        return
    if not is_int(v) or v < low or (high is not None and v > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"option {key!r} must be an int {allowed}{' or None' if optional else ''}, got {v!r}")


def require_seed(options: Mapping[str, Any], key: str = "seed") -> None:
    """``options[key]`` is a random seed: an int in ``[0, MAX_SEED]``."""
    require_int(options, key, 0, MAX_SEED)


def require_list(options: Mapping[str, Any], key: str, check: Callable[[Any], bool], what: str) -> None:
    """``options[key]`` is a non-empty list whose every item passes ``check`` (``what`` says how)."""
    v = options[key]
    if not isinstance(v, (list, tuple)) or not v or not all(check(x) for x in v):
        raise ValueError(f"option {key!r} must be a non-empty list of {what}, got {v!r}")


def require_open_unit(options: Mapping[str, Any], key: str) -> None:
    """``options[key]`` is a number strictly between 0 and 1."""
    v = options[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ValueError(f"option {key!r} must be a number in (0, 1), got {v!r}")


def require_number(options: Mapping[str, Any], key: str, low: float, high: float = float("inf"), *,
                   low_open: bool = False, high_open: bool = False) -> None:
    """``options[key]`` is a number in ``[low, high]`` (``(low`` / ``high)`` when open)."""
    v = options[key]
    above = is_number(v) and (v > low if low_open else v >= low)
    below = is_number(v) and (v < high if high_open else v <= high)
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"option {key!r} must be a number in {interval}, got {v!r}")


def require_thresholds(options: Mapping[str, Any], key: str = "thresholds") -> None:
    """Every value of ``options[key]`` is a number in [0, 1] (a share of attention)."""
    for name, v in options[key].items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{key}[{name!r}] must be a number in [0, 1], got {v!r}")


def require_choice(options: Mapping[str, Any], key: str, choices: tuple) -> None:
    """``options[key]`` is one of ``choices``."""
    if options[key] not in choices:
        raise ValueError(f"option {key!r} must be one of {list(choices)}, got {options[key]!r}")


def require_vocab_range(options: Mapping[str, Any], min_width: int = 1, key: str = "vocab_range") -> None:
    """``options[key]`` is None or ``(low, high)`` ints with ``0 <= low`` and at least ``min_width``
    ids in ``[low, high)``."""
    vr = options[key]
    if vr is None:
        return
    if not (isinstance(vr, (list, tuple)) and len(vr) == 2 and all(is_int(v) for v in vr) and 0 <= vr[0]
            and vr[1] - vr[0] >= min_width):
        width = f" and at least {min_width} ids" if min_width > 1 else ""
        raise ValueError(f"option {key!r} must be None or (low, high) ints with 0 <= low < high{width}, got {vr!r}")
