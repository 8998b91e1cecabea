"""The "repeat" protocol: repeated random tokens, scored at fixed offsets on the second copy.

Each sequence is ``L`` random token ids repeated twice (optionally after a BOS-like token).
For queries in the second copy: ``previous_token`` = attention on key i-1, ``induction_offset``
= on key i-(L-1) (the token after the query token's first occurrence), ``duplicate_offset`` = on
key i-L (the first occurrence). ``sink`` = attention on the first key, over all queries.

This is not TransformerLens' ``detect_head`` number: that one averages every query (the first
copy, which has nothing to copy, and the BOS included) and matches tokens rather than offsets,
so on a clean induction head it is about half of ``induction_offset`` (at most ``L / (2L + 1)``).
For that number, score the same sequences with ``natural`` and ``convention="transformerlens"``
(see :func:`make_sequences`).
"""

from __future__ import annotations

from typing import Iterator, Optional

import pandas as pd
import torch

from ..labels import DUPLICATE_TOKEN, FIRST_TOKEN, INDUCTION, PREVIOUS_TOKEN, label_heads
from ..models import offset_column
from .engine import Batch, check_token_range, prepend_bos, run_batches, vocab_size
from .frames import flat, head_frame
from .spec import Protocol, require_int, require_seed, require_thresholds, require_vocab_range
from .uncertainty import label_margins, pooled_se, se_column

# thresholds are keyed by kind of head; COLUMNS maps each key to its score column here
DEFAULTS = dict(n_sequences=64, seq_len=64, seed=0, vocab_range=None,
                thresholds={"induction": 0.4, "previous_token": 0.4, "duplicate": 0.4, "sink": 0.5})
COLUMNS = {"induction": "induction_offset", "previous_token": "previous_token", "duplicate": "duplicate_offset",
           "sink": "sink"}
NAMES = {"induction_offset": INDUCTION, "previous_token": PREVIOUS_TOKEN, "duplicate_offset": DUPLICATE_TOKEN,
         "sink": FIRST_TOKEN}


def validate(o: dict) -> None:
    require_int(o, "n_sequences", 1)
    require_int(o, "seq_len", 2)
    require_seed(o)
    require_thresholds(o)
    require_vocab_range(o)


def default_vocab_range(vocab: int) -> tuple[int, int]:
    """Skip the low ids (special tokens in most vocabularies) when the vocabulary is large."""
    return (100, min(vocab, 10000)) if vocab > 1000 else (0, vocab)


def make_sequences(n_sequences: int, seq_len: int, low: int, high: int, seed: int) -> torch.Tensor:
    """``[n, 2L]``: L uniform random ids in [low, high), repeated."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(low, high, (n_sequences, seq_len), generator=g)
    return torch.cat([first, first], dim=1)


def second_copy_batches(seqs: torch.Tensor, L: int, batch_size: int, bos: Optional[int]) -> Iterator[Batch]:
    """Batches whose offset statistics read the second copy's queries, ``sink`` every query."""
    for s in range(0, len(seqs), batch_size):
        ids = prepend_bos(seqs[s : s + batch_size], bos)
        second = torch.zeros(ids.shape, dtype=torch.bool)
        second[:, -L:] = True
        yield Batch(ids, None, {"default": second, "sink": torch.ones_like(second)})


def score(model, *, batch_size: int = 16, device=None, bos_token_id: Optional[int] = None,
          progress: bool = True, **options) -> pd.DataFrame:
    """Per-(layer, head) ``previous_token``, ``induction_offset``, ``duplicate_offset``, ``sink``,
    their standard errors over sequences (``<score>_se``), ``is_*``, ``label``, ``label_margin``
    and ``is_borderline`` (see ``uncertainty.py``)."""
    o = PROTOCOL.check_options(options)
    L = o["seq_len"]
    low, high = o["vocab_range"] or default_vocab_range(vocab_size(model))
    check_token_range(model, low, high, "repeat")
    seqs = make_sequences(o["n_sequences"], L, low, high, o["seed"])
    res = run_batches(model, second_copy_batches(seqs, L, batch_size, bos_token_id),
                      total=-(-len(seqs) // batch_size), offsets=(1, L - 1, L), per_sample=True, device=device,
                      desc="repeat", progress=progress)
    statistic = {"previous_token": offset_column(1), "induction_offset": offset_column(L - 1),
                 "duplicate_offset": offset_column(L), "sink": "sink"}
    df = head_frame(*res.means["sink"].shape)
    for col, stat in statistic.items():
        df[col] = flat(res.means[stat])
    for col, stat in statistic.items():
        df[se_column(col)] = flat(pooled_se(res.per_sample, res.counts, stat))
    thresholds = {COLUMNS[k]: v for k, v in o["thresholds"].items()}
    df = label_margins(label_heads(df, thresholds, NAMES), thresholds, NAMES)
    df.attrs.update(settings=dict(o, vocab_range=[low, high], bos_token_id=bos_token_id,
                                  averaging="offsets: second-copy queries; sink: every query; pooled over sequences",
                                  standard_error="over sequences"))
    return df


PROTOCOL = Protocol(name="repeat", score=score, defaults=DEFAULTS, takes_texts=False,
                    induction_score="induction_offset", induction_flag="is_induction", validate=validate,
                    first_token_score="sink")
