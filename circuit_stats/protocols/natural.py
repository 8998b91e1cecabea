"""The "natural" protocol: head scores on natural text of any length.

Token-match ``induction`` and ``duplicate`` mass (TransformerLens head-detector masks),
``previous_token`` (attention on key i-1), ``sink`` (on the first key) and ``entropy`` (nats),
averaged over every query of every text. Memory is O(N) per layer, so 8k-token and longer
texts run where eager attention cannot.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from ..labels import (
    DUPLICATE_TOKEN,
    FIRST_TOKEN,
    INDUCTION,
    PREVIOUS_TOKEN,
    label_heads,
)
from ..models import offset_column
from .common import flat, head_frame, run_batches, text_batches, tokenize_texts
from .spec import Protocol

DEFAULTS = dict(max_tokens=None,
                thresholds={"induction": 0.3, "duplicate": 0.3, "previous_token": 0.4, "sink": 0.5})
NAMES = {"induction": INDUCTION, "previous_token": PREVIOUS_TOKEN, "duplicate": DUPLICATE_TOKEN,
         "sink": FIRST_TOKEN}


def score(model, *, tokenizer=None, texts=None, batch_size: int = 1, device=None,
          bos_token_id: Optional[int] = None, progress: bool = True, **options) -> pd.DataFrame:
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown natural options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options, "thresholds": {**DEFAULTS["thresholds"], **options.get("thresholds", {})}}
    seqs = tokenize_texts(texts, tokenizer, model)
    if o["max_tokens"]:
        seqs = [s[: int(o["max_tokens"])] for s in seqs]

    batches = text_batches(seqs, batch_size, bos_token_id)
    res = run_batches(model, batches, total=-(-len(seqs) // batch_size), offsets=(1,),
                      token_match=True, entropy=True, device=device, desc="natural", progress=progress)
    m = res.means
    df = head_frame(*m["sink"].shape)
    df["induction"] = flat(m["induction"])
    df["duplicate"] = flat(m["duplicate"])
    df["previous_token"] = flat(m[offset_column(1)])
    df["sink"] = flat(m["sink"])
    df["entropy"] = flat(m["entropy"])
    df = label_heads(df, o["thresholds"], NAMES)
    df.attrs.update(settings=dict(o, n_texts=len(seqs), n_tokens=sum(map(len, seqs)),
                                  bos_token_id=bos_token_id,
                                  tokenizer=type(tokenizer).__name__ if tokenizer else "bytes"))
    return df


PROTOCOL = Protocol(name="natural", score=score, defaults=DEFAULTS, takes_texts=True,
                    induction_score="induction", induction_flag="is_induction")
