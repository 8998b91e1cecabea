"""The "sink" protocol: Gu et al. (ICLR 2025) attention-sink metric on natural text.

``alpha0`` = mean over all queries of the attention on position 0 (queries i >= 0, so the
first query, which can only attend to itself, counts too). A head is a sink head if
``alpha0 > eps`` (default 0.3). The sink rate is the share of (sample, layer, head) triples
over ``eps``, in ``df.attrs["sink_rate"]`` (percent).
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from ..labels import FIRST_TOKEN, UNCLASSIFIED
from .common import flat, head_frame, run_batches, text_batches, tokenize_texts
from .spec import Protocol

DEFAULTS = dict(seq_len=64, n_sequences=None, eps=0.3)


def windows(token_lists, seq_len: int, n_sequences: Optional[int]) -> list[list[int]]:
    """Prompts of exactly ``seq_len`` tokens: consecutive windows of each text (remainders shorter
    than ``seq_len`` are dropped unless a text is shorter, then it is used whole)."""
    out = []
    for ids in token_lists:
        if len(ids) <= seq_len:
            out.append(ids)
            continue
        for s in range(0, len(ids) - seq_len + 1, seq_len):
            out.append(ids[s : s + seq_len])
    return out[:n_sequences] if n_sequences else out


def score(model, *, tokenizer=None, texts=None, batch_size: int = 16, device=None,
          bos_token_id: Optional[int] = None, progress: bool = True, **options) -> pd.DataFrame:
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown sink options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options}
    prompts = windows(tokenize_texts(texts, tokenizer, model), int(o["seq_len"]), o["n_sequences"])

    batches = text_batches(prompts, batch_size, bos_token_id)
    res = run_batches(model, batches, total=-(-len(prompts) // batch_size), per_sample=True,
                      device=device, desc="sink", progress=progress)
    alpha0 = res.means["sink"]
    df = head_frame(*alpha0.shape)
    df["alpha0"] = flat(alpha0)
    df["is_sink"] = df["alpha0"] > o["eps"]
    df["label"] = df["is_sink"].map({True: FIRST_TOKEN, False: UNCLASSIFIED})
    per = res.per_sample["sink"]  # [samples, L, H]
    df.attrs.update(
        sink_rate=float((per > o["eps"]).double().mean().item() * 100),
        settings=dict(o, n_prompts=len(prompts), bos_token_id=bos_token_id,
                      tokenizer=type(tokenizer).__name__ if tokenizer else "bytes"),
    )
    return df


PROTOCOL = Protocol(name="sink", score=score, defaults=DEFAULTS, takes_texts=True)
