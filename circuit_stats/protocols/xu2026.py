"""The "xu2026" protocol (arXiv 2606.02378), reproduced exactly.

2000 synthetic sequences of 256 token ids in [100, 10000), each with one planted bigram
``a b`` at ``ab, ab+1`` and ``a`` again at the end. ``vocab_range=(low, high)`` draws the ids
from ``[low, high)`` instead, by the same recipe (e.g. a model with a smaller vocabulary, such as
the bundled byte-level demo: ``vocab_range=(32, 127)``); the default ``None`` is the paper's. Attention is read from the last query
only, at six targets, and compared with a 50-position baseline. The attention on each target
comes from the fused pass as a probe-key probability ``exp(s - lse)`` of the last query; no
matrix is materialised.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pandas as pd
import torch

from ..labels import (
    DUPLICATE_TOKEN,
    FIRST_TOKEN,
    INDUCTION,
    LOCAL,
    PREVIOUS_TOKEN,
    SELF,
    UNCLASSIFIED,
)
from ..models import probe_column
from .engine import Batch, check_token_range, prepend_bos, run_batches
from .frames import flat, head_frame
from .spec import Protocol, require_int, require_number, require_seed, require_vocab_range
from .uncertainty import label_margins, mean_se, ratio_se, se_column

CLASSES = (INDUCTION, DUPLICATE_TOKEN, PREVIOUS_TOKEN, SELF, FIRST_TOKEN, LOCAL)
LOW, HIGH = 100, 10000
DEFAULTS = dict(n_sequences=2000, seq_len=256, seed=42, baseline_seed=0, n_baseline=50, vocab_range=None,
                class_threshold=30.0, induction_screen=50.0, first_token_screen=50.0,
                previous_token_screen=100.0)
MIN_SEQ_LEN = 130  # ab is drawn from [20, 128) and ab+1 < T-6


def validate(o: dict) -> None:
    require_int(o, "n_sequences", 1)
    require_int(o, "seq_len", MIN_SEQ_LEN)
    for key in ("seed", "baseline_seed"):
        require_seed(o, key)
    require_int(o, "n_baseline", 1)
    require_vocab_range(o, min_width=2)  # a and b are distinct
    for key in ("class_threshold", "induction_screen", "first_token_screen", "previous_token_screen"):
        require_number(o, key, 0.0)
    T = o["seq_len"]
    if T - 7 < o["n_baseline"]:  # positions 1..T-2 minus the target neighbourhood T-6..T-2
        raise ValueError(f"seq_len {T} leaves fewer than n_baseline={o['n_baseline']} baseline positions")


def make_sequences(n_sequences: int = 2000, seq_len: int = 256, seed: int = 42, low: int = LOW,
                   high: int = HIGH) -> tuple[np.ndarray, np.ndarray]:
    """The published recipe: ``(seqs [n, T] int64, ab [n])``, in the published RNG order, ids in
    ``[low, high)`` (the paper's: [100, 10000))."""
    if seq_len < MIN_SEQ_LEN:
        raise ValueError(f"seq_len must be >= {MIN_SEQ_LEN} (ab is drawn from [20, 128) and ab+1 < T-6), got {seq_len}")
    rng = np.random.RandomState(seed)
    seqs = np.empty((n_sequences, seq_len), dtype=np.int64)
    abs_ = np.empty(n_sequences, dtype=np.int64)
    for n in range(n_sequences):
        seq = rng.randint(low, high, size=seq_len)
        a, b = rng.choice(np.arange(low, high), size=2, replace=False)
        ab = rng.randint(20, 128)
        seq[ab] = a
        seq[ab + 1] = b
        for i in range(seq_len):  # every other position holding a is redrawn, left to right
            if i != ab and seq[i] == a:
                seq[i] = rng.randint(low, high)
        for i in range(seq_len):  # then likewise for b
            if i != ab + 1 and seq[i] == b:
                seq[i] = rng.randint(low, high)
        seq[-1] = a
        seqs[n], abs_[n] = seq, ab
    return seqs, abs_


def baseline_positions(seq_len: int = 256, n_baseline: int = 50, seed: int = 0) -> list[int]:
    """50 key positions from ``RandomState(0).randint(1, T-1)``, skipping the target
    neighbourhood {0, T-1, ..., T-6} and repeats."""
    T = seq_len
    excluded = {0, T - 1, T - 2, T - 3, T - 4, T - 5, T - 6}
    if len(set(range(1, T - 1)) - excluded) < n_baseline:
        raise ValueError(f"seq_len {T} leaves fewer than {n_baseline} baseline positions")
    rng = np.random.RandomState(seed)
    out: list[int] = []
    while len(out) < n_baseline:
        p = int(rng.randint(1, T - 1))
        if p not in excluded and p not in out:
            out.append(p)
    return out


def target_keys(ab: np.ndarray, seq_len: int, baseline: list[int]) -> np.ndarray:
    """Per-sequence probe keys: the six class targets (local = T-3..T-6), then the baseline."""
    T = seq_len
    n = len(ab)
    fixed = np.array([T - 2, T - 1, 0, T - 3, T - 4, T - 5, T - 6] + list(baseline))
    return np.concatenate([ab[:, None] + 1, ab[:, None], np.broadcast_to(fixed, (n, len(fixed)))], axis=1)


def probe_batches(seqs: np.ndarray, keys: np.ndarray, batch_size: int, bos: Optional[int]) -> Iterator[Batch]:
    """Batches reading the last query only, at the per-sequence probe ``keys`` (shifted past a BOS)."""
    shift = 0 if bos is None else 1
    for s in range(0, len(seqs), batch_size):
        ids = prepend_bos(torch.from_numpy(seqs[s : s + batch_size]), bos)
        probe = torch.from_numpy(keys[s : s + batch_size] + shift)
        if bos is not None:
            probe[:, 4] = 0  # the first-token target is the BOS itself
        qm = torch.zeros(ids.shape, dtype=torch.bool)
        qm[:, -1] = True  # the last query only
        yield Batch(ids, None, qm, probe)


def attention_column(head_class: str) -> str:
    """``"previous-token"`` -> ``"attn_previous_token"``."""
    return f"attn_{head_class.replace('-', '_')}"


def selectivity_column(head_class: str) -> str:
    """``"previous-token"`` -> ``"sel_previous_token"``."""
    return f"sel_{head_class.replace('-', '_')}"


def target_attention(per_sample: dict[str, torch.Tensor], n_probes: int) -> dict[str, torch.Tensor]:
    """Per-sequence attention of the last query on each class target and on the baseline,
    ``{attn_<class>, baseline: [sequences, layers, heads]}``, from the probe columns in
    :func:`target_keys` order (local: the mean of its four keys)."""
    probes = [per_sample[probe_column(i)] for i in range(n_probes)]
    attn = {INDUCTION: probes[0], DUPLICATE_TOKEN: probes[1], PREVIOUS_TOKEN: probes[2], SELF: probes[3],
            FIRST_TOKEN: probes[4], LOCAL: torch.stack(probes[5:9]).mean(0)}
    out = {attention_column(c): attn[c] for c in CLASSES}
    out["baseline"] = torch.stack(probes[9:]).mean(0)
    return out


def score(model, *, batch_size: int = 32, device=None, bos_token_id: Optional[int] = None,
          progress: bool = True, **options) -> pd.DataFrame:
    o = PROTOCOL.check_options(options)
    low, high = o["vocab_range"] or (LOW, HIGH)
    try:
        check_token_range(model, low, high, "xu2026")
    except ValueError as err:
        raise ValueError(f"{err}; pass vocab_range=(low, high) to draw the ids from a range that fits") from None
    T = o["seq_len"]
    seqs, ab = make_sequences(o["n_sequences"], T, o["seed"], low, high)
    baseline = baseline_positions(T, o["n_baseline"], o["baseline_seed"])
    keys = target_keys(ab, T, baseline)
    n_batches = -(-len(seqs) // batch_size)
    res = run_batches(model, probe_batches(seqs, keys, batch_size, bos_token_id), total=n_batches,
                      per_sample=True, device=device, desc="xu2026", progress=progress)
    per_seq = target_attention({name: t.double() for name, t in res.per_sample.items()}, keys.shape[1])
    df = head_frame(*per_seq["baseline"].shape[1:])
    for col, values in per_seq.items():
        df[col], df[se_column(col)] = (flat(t) for t in mean_se(values))
    denom = np.maximum(df["baseline"].to_numpy(), 1e-8)
    sel_cols = [selectivity_column(c) for c in CLASSES]
    for c, col in zip(CLASSES, sel_cols):
        df[col] = df[attention_column(c)].to_numpy() / denom
        df[se_column(col)] = flat(ratio_se(per_seq[attention_column(c)], per_seq["baseline"]))
    sel = df[sel_cols].to_numpy()
    best = sel.argmax(1)
    df["label"] = [CLASSES[b] if sel[i, b] >= o["class_threshold"] else UNCLASSIFIED for i, b in enumerate(best)]
    df = label_margins(df, dict.fromkeys(sel_cols, o["class_threshold"]), dict(zip(sel_cols, CLASSES)))
    df["screen_induction"] = df["sel_induction"] >= o["induction_screen"]
    df["screen_first_token"] = df["sel_first_token"] >= o["first_token_screen"]
    df["screen_previous_token"] = df["sel_previous_token"] >= o["previous_token_screen"]
    df.attrs.update(settings=dict(o, baseline_positions=baseline, bos_token_id=bos_token_id, vocab_range=[low, high]))
    return df


PROTOCOL = Protocol(name="xu2026", score=score, defaults=DEFAULTS, takes_texts=False,
                    induction_score="sel_induction", induction_flag="screen_induction", validate=validate,
                    first_token_score="sel_first_token")
