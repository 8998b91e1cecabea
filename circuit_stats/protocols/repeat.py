"""The "repeat" protocol: TransformerLens-style repeated random tokens.

Each sequence is ``L`` random token ids repeated twice (optionally after a BOS-like token).
For queries in the second copy: ``previous_token`` = attention on key i-1, ``induction`` =
on key i-(L-1) (the token after the query token's first occurrence), ``duplicate`` = on key
i-L (the first occurrence). ``sink`` = attention on the first key, over all queries.
"""

from __future__ import annotations

from typing import Iterator, Optional

import pandas as pd
import torch

from ..labels import (
    DUPLICATE_TOKEN,
    FIRST_TOKEN,
    INDUCTION,
    PREVIOUS_TOKEN,
    label_heads,
)
from ..models import offset_column
from .common import (
    Batch,
    check_token_range,
    flat,
    head_frame,
    prepend_bos,
    run_batches,
    vocab_size,
)
from .spec import Protocol

DEFAULTS = dict(n_sequences=64, seq_len=64, seed=0, vocab_range=None,
                thresholds={"induction": 0.4, "previous_token": 0.4, "duplicate": 0.4, "sink": 0.5})
NAMES = {"induction": INDUCTION, "previous_token": PREVIOUS_TOKEN, "duplicate": DUPLICATE_TOKEN,
         "sink": FIRST_TOKEN}


def default_vocab_range(vocab: int) -> tuple[int, int]:
    """Skip the low ids (special tokens in most vocabularies) when the vocabulary is large."""
    return (100, min(vocab, 10000)) if vocab > 1000 else (0, vocab)


def make_sequences(n_sequences: int, seq_len: int, low: int, high: int, seed: int) -> torch.Tensor:
    """``[n, 2L]``: L uniform random ids in [low, high), repeated."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(low, high, (n_sequences, seq_len), generator=g)
    return torch.cat([first, first], dim=1)


def _batches(seqs: torch.Tensor, L: int, batch_size: int, bos: Optional[int]) -> Iterator[Batch]:
    for s in range(0, len(seqs), batch_size):
        ids = prepend_bos(seqs[s : s + batch_size], bos)
        second = torch.zeros(ids.shape, dtype=torch.bool)
        second[:, -L:] = True
        yield Batch(ids, None, {"default": second, "sink": torch.ones_like(second)})


def score(model, *, batch_size: int = 16, device=None, bos_token_id: Optional[int] = None,
          progress: bool = True, **options) -> pd.DataFrame:
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown repeat options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options, "thresholds": {**DEFAULTS["thresholds"], **options.get("thresholds", {})}}
    L = int(o["seq_len"])
    if L < 2:
        raise ValueError(f"seq_len must be >= 2, got {L}")
    low, high = o["vocab_range"] or default_vocab_range(vocab_size(model))
    check_token_range(model, low, high, "repeat")
    seqs = make_sequences(o["n_sequences"], L, low, high, o["seed"])
    res = run_batches(model, _batches(seqs, L, batch_size, bos_token_id), total=-(-len(seqs) // batch_size),
                      offsets=(1, L - 1, L), device=device, desc="repeat", progress=progress)
    m = res.means
    df = head_frame(*m["sink"].shape)
    df["previous_token"] = flat(m[offset_column(1)])
    df["induction"] = flat(m[offset_column(L - 1)])
    df["duplicate"] = flat(m[offset_column(L)])
    df["sink"] = flat(m["sink"])
    df = label_heads(df, o["thresholds"], NAMES)
    df.attrs.update(settings=dict(o, vocab_range=[low, high], bos_token_id=bos_token_id))
    return df


PROTOCOL = Protocol(name="repeat", score=score, defaults=DEFAULTS, takes_texts=False,
                    induction_score="induction", induction_flag="is_induction")
