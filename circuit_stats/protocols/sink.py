"""The "sink" protocol: the attention-sink metric of Gu et al. (ICLR 2025) on natural text.

``alpha0`` = mean over all queries of the attention on position 0 (queries i >= 0, so the
first query, which can only attend to itself, counts too). Gu et al.'s sink rate is the share of
(prompt, layer, head) triples with the prompt's ``alpha0 > eps`` (default 0.3), in percent:
``df.attrs["sink_rate"]`` (per prompt in ``df.attrs["sink_rate_per_prompt"]``), and per head the
column ``sink_rate`` (percent of prompts in which the head's ``alpha0 > eps``; its mean over heads
is ``df.attrs["sink_rate"]``). ``is_first_token`` thresholds the prompt-averaged ``alpha0``
instead (one label per head), which their code never does: a head with ``alpha0`` of 0.6 in half
the prompts and 0.1 in the others has ``sink_rate`` 50 but an average of 0.35.

``convention="gu2025"`` is Gu et al.'s recipe as their code runs it (``measure_attention_sink``
in sail-sg/Attention-Sink): each text gives one prompt, tokenized with the tokenizer's default
special tokens (``tokenizer(prompt)``: a BOS only where the tokenizer adds one, as Llama's does;
GPT-2's and Pythia's add none), then cut to its first ``seq_len`` (64) tokens; texts shorter than
that are refused (``drop_short=True`` drops and counts them). ``bos_token_id`` puts that token in
front explicitly (BOS + 63 text tokens), as in the other conventions.

``convention="circuit_stats"`` (default) uses more of each text: consecutive ``seq_len``-token
windows (a text shorter than ``seq_len`` is used whole, so ``alpha0`` weighs prompts by length),
tokenized as the tokenizer does by default, with ``bos_token_id`` put in front of every window
(``seq_len + 1`` tokens).

Beyond position 0 (``record(key_mass=True)``, the attention each key receives; off by default, it
costs a second pass over the keys): ``first_keys=K`` adds Gu et al.'s ``alpha_k`` for
``k = 1 .. K-1`` as columns ``alpha1``, ... (each key's attention over the queries that can attend
it, pooled over prompts); ``secondary_sinks=True`` finds the keys other than position 0 with
``alpha_k > eps`` in each prompt (keys with at least ``min_queries`` queries at or after them) and
groups them by token id across texts: ``df.attrs["secondary_sinks"]`` (records with ``layer``,
``head``, ``token_id``, ``token``, ``n_keys``, ``n_sinks``, ``alpha_mean``, ``alpha_max``; see
``key_sinks.secondary_sinks``) and per head the column ``n_secondary_sinks`` (token ids). The
per-prompt key sums it needs take O(prompts x layers x heads x seq_len) memory on the device.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd
import torch

from ..key_sinks import first_key_alphas, secondary_sinks, sinks_per_head
from ..labels import FIRST_TOKEN, UNCLASSIFIED, flag_column
from ..names import SINK_EPS, SINK_MIN_QUERIES
from .engine import run_batches
from .frames import flat, head_frame
from .spec import Protocol, require_choice, require_int, require_open_unit
from .texts import check_no_double_bos, text_batches, tokenize_texts
from .uncertainty import label_margins, mean_se, se_column

CONVENTIONS = ("circuit_stats", "gu2025")
DEFAULTS = dict(seq_len=64, n_sequences=None, eps=SINK_EPS, convention="circuit_stats", drop_short=False,
                first_keys=1, secondary_sinks=False, min_queries=SINK_MIN_QUERIES)
FLAG = flag_column(FIRST_TOKEN)  # "is_first_token"


def validate(o: dict) -> None:
    require_int(o, "seq_len", 2)
    require_int(o, "n_sequences", 1, optional=True)
    require_open_unit(o, "eps")
    require_choice(o, "convention", CONVENTIONS)
    require_int(o, "first_keys", 1, o["seq_len"])
    require_int(o, "min_queries", 1)
    if o["drop_short"] and o["convention"] != "gu2025":
        raise ValueError("drop_short is a convention='gu2025' option (the default convention keeps short texts)")


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


def gu_prompts(token_lists, seq_len: int, bos: Optional[int], drop_short: bool) -> tuple[list[list[int]], int]:
    """Gu et al.'s prompts: the first ``seq_len`` tokens of ``[bos] + ids`` (of ``ids`` without a
    BOS; ``ids`` as the tokenizer gave them, its own special tokens included) of every text; texts
    too short for ``seq_len`` tokens raise, or with ``drop_short`` are dropped.
    Returns (prompts, number dropped)."""
    head = [] if bos is None else [int(bos)]
    full = [head + list(ids) for ids in token_lists]
    short = [i for i, p in enumerate(full) if len(p) < seq_len]
    if short and not drop_short:
        raise ValueError(f"{len(short)} of {len(full)} texts have fewer than {seq_len} tokens"
                         f"{' (BOS included)' if head else ''} (texts {short[:10]}{'...' if len(short) > 10 else ''}); "
                         "Gu et al. use the first 64 tokens of each prompt: give longer texts or drop_short=True")
    return [p[:seq_len] for p in full if len(p) >= seq_len], len(short)


def sink_rate(alpha0_per_prompt: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-prompt sink rate (percent): the share of (layer, head) with ``alpha0 > eps``, for
    ``alpha0_per_prompt [prompts, layers, heads]``; Gu et al. report its mean."""
    return (alpha0_per_prompt > eps).double().mean((1, 2)) * 100


def score(model, *, tokenizer=None, texts=None, batch_size: int = 16, device=None,
          bos_token_id: Optional[int] = None, progress: bool = True, **options) -> pd.DataFrame:
    """Per-(layer, head) ``alpha0``, its standard error over prompts (``alpha0_se``), ``sink_rate``,
    ``is_first_token``, ``label``, ``label_margin`` and ``is_borderline``; sink rates in ``df.attrs``."""
    o = PROTOCOL.check_options(options)
    gu = o["convention"] == "gu2025"
    enc = tokenize_texts(texts, tokenizer, model)  # the tokenizer's default special tokens, as Gu et al.
    check_no_double_bos(enc, bos_token_id)
    n_dropped = 0
    if gu:
        bos = bos_token_id
        prompts, n_dropped = gu_prompts(enc.seqs, o["seq_len"], bos, o["drop_short"])
        prompts = prompts[: o["n_sequences"]] if o["n_sequences"] else prompts
        if not prompts:
            raise ValueError(f"no text has {o['seq_len']} tokens: nothing to score")
        batch_bos = None  # already in the prompts
    else:
        bos = batch_bos = bos_token_id
        prompts = windows(enc.seqs, o["seq_len"], o["n_sequences"])

    longest = max(map(len, prompts), default=0) + (batch_bos is not None)
    if o["first_keys"] > longest:
        raise ValueError(f"first_keys={o['first_keys']} asks for alpha_k past the longest prompt ({longest} tokens)")
    key_mass = o["first_keys"] > 1 or o["secondary_sinks"]
    res = run_batches(model, text_batches(prompts, batch_size, batch_bos), total=-(-len(prompts) // batch_size),
                      per_sample=True, key_mass=key_mass, device=device, desc="sink", progress=progress)
    per = res.per_sample["sink"]  # [prompts, L, H]
    alpha0 = per.double().mean(0) if gu else res.means["sink"]  # equal-length prompts: the same
    df = head_frame(*alpha0.shape)
    df["alpha0"] = flat(alpha0)
    df[se_column("alpha0")] = flat(mean_se(per, None if gu else res.counts["sink"])[1])
    df["sink_rate"] = flat((per > o["eps"]).double().mean(0) * 100)  # Gu et al.'s rate, per head
    df[FLAG] = df["alpha0"] > o["eps"]
    df["label"] = df[FLAG].map({True: FIRST_TOKEN, False: UNCLASSIFIED})
    df = label_margins(df, {"alpha0": o["eps"]}, {"alpha0": FIRST_TOKEN})
    if key_mass:
        for column, alpha in first_key_alphas(res.means["key_attention"], o["first_keys"]).items():
            df[column] = flat(alpha)
    if o["secondary_sinks"]:
        table = secondary_sinks(res.per_sample["key_attention"], res.key_tokens, o["eps"], o["min_queries"],
                                tokenizer)
        df["n_secondary_sinks"] = sinks_per_head(table, *alpha0.shape).reshape(-1).numpy()
        df.attrs["secondary_sinks"] = table.to_dict("records")
    rates = sink_rate(per, o["eps"])
    df.attrs.update(
        sink_rate=float(rates.mean()),
        sink_rate_se=float(mean_se(rates)[1]),
        sink_rate_per_prompt=[float(r) for r in rates],
        settings=dict(o, n_prompts=len(prompts), n_dropped_short=n_dropped, bos_token_id=bos,
                      prompt_lengths=sorted({len(p) + (batch_bos is not None) for p in prompts}),
                      averaging=("per prompt, then the mean over prompts" if gu
                                 else "pooled over every query of every window"),
                      standard_error="over prompts",
                      tokenizer=enc.tokenizer, special_tokens=enc.special_tokens),
    )
    return df


PROTOCOL = Protocol(name="sink", score=score, defaults=DEFAULTS, takes_texts=True, validate=validate,
                    first_token_score="alpha0")
