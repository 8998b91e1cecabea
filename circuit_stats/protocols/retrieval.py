"""The "retrieval" protocol: retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically
Explains Long-Context Factuality", code: nightdessert/Retrieval_Head).

A needle of ``needle_len`` distinct tokens, none of which occurs in the haystack, is inserted at
several depths of a haystack of ``context_length`` tokens (natural text, cycled); the prompt ends
with the needle's first ``prefix_len`` tokens, and the model continues it greedily with a KV cache,
one query per step. At each step a head scores a hit when its top-1 key (the key with the largest
attention probability, read in the fused pass of that step through ``record(top1=True)``) lies in
the needle and holds the token the step generates. Per trial, score = hits / tokens to copy
(``needle_len - prefix_len``); a head's ``retrieval_score`` is the mean over the trials the model
copied (token recall of the continuation > ``success_recall``), NaN when it copied none; a head
is a retrieval head (``is_retrieval``, ``label`` ``retrieval``, else ``unclassified``) when its
score is >= ``threshold``. Logits that turn NaN or infinite while generating raise
``NonFiniteError`` (hits read from NaN attention would be noise).

``convention="wu2024"`` scores trials as Wu et al.'s ``retrieval_head_detection.py`` does (see
``wu2024.py``; tested against a transcription of their code): hits only on the answer span (the
needle after its cue prefix), up to 50 decoded tokens or a newline, success by ROUGE-1 recall of
the decoded texts (``pip install 'circuit-stats[retrieval]'``). Both conventions divide a trial's
hits by the answer span's length (their ``needle_end - needle_start``, the ``real_needle``'s tokens).

How the default convention differs from their code, precisely:

* hits count on every needle token, the cue prefix included (theirs: the answer span only);
* decoding generates exactly the answer's tokens (theirs: up to 50 tokens, stopping after a
  newline), so a head cannot score after the answer;
* success is clipped unigram recall on token ids > ``success_recall`` (theirs: ROUGE-1 recall
  > 50 on stemmed words of the decoded texts).

How both conventions differ from their setup (the trial construction, shared):

* the cue is the needle's prefix, not a natural-language question, so that base models (and the
  bundled byte-level demo) retrieve without instruction following; their needles are sentences
  placed at a sentence break and the answer may paraphrase them; ours are ``needle_len`` random
  distinct tokens absent from the haystack, at exactly the requested depth;
* the answer span is known exactly; theirs is searched for (``find_needle_idx``: the first span
  whose token set overlaps the answer's by > 90 %, which finds the same span for answers shorter
  than 10 tokens and can start one token early for longer ones);
* their tokenizer adds its BOS (pass ``bos_token_id=`` for that); they leave a 200-token buffer
  below each context length; they read bf16 probabilities; their grid is 10 depths (0-100 %) x 20
  lengths (1k-50k tokens): pass ``depths`` and ``context_lengths`` to follow it where the model's
  context allows (the default is 5 depths x 1 length x 2 needles);
* ties in the top-1 key go to the smallest position (``torch.topk`` leaves them unspecified).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..finite import NonFiniteError
from ..labels import RETRIEVAL, UNCLASSIFIED
from ..models import record
from ..models.config import text_config
from ..models.context import check_context
from ..profiling.corpus import as_documents, sample_corpus_path
from ..profiling.prefill import cache_keyword, chunked_prefill
from ..tokenization import encode, resolve_tokenizer
from .spec import (MAX_SEED, Protocol, is_int, is_number, require_choice, require_int, require_list,
                   require_number, require_vocab_range)
from .uncertainty import label_margins, mean_se, se_column
from .wu2024 import MAX_NEW_TOKENS, decode, first_stop, newline_token, rouge1_recall

CONVENTIONS = ("circuit_stats", "wu2024")
DEFAULTS = dict(
    convention="circuit_stats",
    context_lengths=[1024],
    depths=[0.1, 0.3, 0.5, 0.7, 0.9],
    n_needles=2,
    needle_len=16,
    prefix_len=4,
    vocab_range=None,
    seed=0,
    success_recall=0.5,
    threshold=0.1,
    chunk_size=1024,
)


def validate(o: dict) -> None:
    """Every option's range, before the model runs (``Protocol.check_options``)."""
    require_int(o, "needle_len", 2)
    require_int(o, "prefix_len", 1, o["needle_len"] - 1)
    require_list(o, "context_lengths", lambda n: is_int(n) and n > o["needle_len"] + o["prefix_len"],
                 f"ints > needle_len + prefix_len = {o['needle_len'] + o['prefix_len']} (room for a haystack)")
    require_list(o, "depths", lambda d: is_number(d) and 0 <= d <= 1, "numbers in [0, 1]")
    require_int(o, "n_needles", 1)
    require_vocab_range(o)
    require_int(o, "seed", 0, MAX_SEED - (len(o["context_lengths"]) - 1))  # context length i uses seed + i
    require_number(o, "success_recall", 0.0, 1.0, high_open=True)  # a trial succeeds when recall > it
    require_number(o, "threshold", 0.0, 1.0, low_open=True)  # a head's score is a share of copied tokens
    require_int(o, "chunk_size", 1)
    require_choice(o, "convention", CONVENTIONS)


def haystack_tokens(model, texts, tokenizer) -> list[int]:
    """Every text's tokens, concatenated (texts default to the bundled sample corpus)."""
    docs = as_documents(sample_corpus_path() if texts is None else texts)
    tok = resolve_tokenizer(tokenizer) if any(isinstance(d.text, str) for d in docs) else None
    out: list[int] = []
    for d in docs:
        out.extend(encode(tok, d.text, add_special_tokens=False))
    if not out:
        raise ValueError("texts: the haystack holds no tokens")
    return out


def needle_candidates(haystack: Sequence[int], vocab: int, vocab_range: Optional[Sequence[int]]) -> np.ndarray:
    """Token ids in ``vocab_range`` (default: printable ASCII for a byte vocabulary, else
    [100, min(vocab, 10000))) that never occur in the haystack."""
    if vocab_range is None:
        vocab_range = (32, 127) if vocab <= 256 else (100, min(vocab, 10000))
    low, high = int(vocab_range[0]), int(vocab_range[1])
    if not 0 <= low < high <= vocab:
        raise ValueError(f"vocab_range [{low}, {high}) must lie in the model's vocabulary of {vocab}")
    used = np.zeros(vocab, dtype=bool)
    used[np.asarray(haystack)] = True
    return np.array([t for t in range(low, high) if not used[t]])


def build_trials(haystack: Sequence[int], context_length: int, depths: Sequence[float], n_needles: int,
                 needle_len: int, prefix_len: int, candidates: np.ndarray, seed: int,
                 bos_token_id: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts ``[T, context_length]`` (T = n_needles x depths), needle ranges ``[T, 2]`` and
    needles ``[T, needle_len]``. A prompt is [BOS] haystack[:d] + needle + haystack[d:] + the
    needle's prefix, with the haystack cycled to fill ``context_length``."""
    n_hay = context_length - needle_len - prefix_len - (bos_token_id is not None)
    if n_hay < 1:
        raise ValueError(f"context_length {context_length} leaves no room for a haystack "
                         f"(needle_len {needle_len} + prefix_len {prefix_len})")
    if len(candidates) < needle_len:
        raise ValueError(f"only {len(candidates)} token ids in vocab_range never occur in the haystack; "
                         f"a needle needs {needle_len} distinct ones (shorten needle_len or widen vocab_range)")
    hay = torch.as_tensor(list(haystack), dtype=torch.long)
    hay = hay.repeat(-(-n_hay // len(hay)))[:n_hay]
    rng = np.random.RandomState(seed)
    prompts, spans, needles = [], [], []
    for _ in range(n_needles):
        needle = torch.as_tensor(rng.choice(candidates, size=needle_len, replace=False), dtype=torch.long)
        for depth in depths:
            d = int(round(float(depth) * n_hay))
            parts = [hay[:d], needle, hay[d:], needle[:prefix_len]]
            if bos_token_id is not None:
                parts.insert(0, torch.tensor([int(bos_token_id)]))
            start = d + (bos_token_id is not None)
            prompts.append(torch.cat(parts))
            spans.append((start, start + needle_len))
            needles.append(needle)
    return torch.stack(prompts), torch.tensor(spans), torch.stack(needles)


def token_recall(generated: Sequence[int], expected: Sequence[int]) -> float:
    """Clipped unigram recall (ROUGE-1 recall on token ids) of ``expected`` in ``generated``."""
    gen, exp = Counter(generated), Counter(expected)
    return sum(min(c, gen[t]) for t, c in exp.items()) / max(1, len(expected))


@torch.no_grad()
def retrieval_hits(model, prompts: torch.Tensor, spans: torch.Tensor, n_steps: int, chunk_size: int,
                   stop_token: Optional[int] = None):
    """Greedy decoding of ``n_steps`` tokens after each prompt (one batch, KV cache), reading each
    step's top-1 key per (layer, head) in that step's fused forward; a hit is a top-1 key in
    ``spans [T, 2]`` that holds the generated token. With ``stop_token`` a trial stops counting
    after the step that generates it (that step counts; the batch decodes on).

    Returns ``(hits [T, L, H] int, generated [T, n_steps])``."""
    device = next(model.parameters()).device
    prompts, spans = prompts.to(device), spans.to(device)
    cache = chunked_prefill(model, prompts[:, :-1], chunk_size)  # no statistics during prefill
    kw = cache_keyword(model)
    T = prompts.shape[0]
    step_input = prompts[:, -1:]
    alive = torch.ones(T, dtype=torch.bool, device=device)
    hits = None
    generated = []
    with record(model, top1=True) as rec:
        for _ in range(n_steps):
            logits = model(input_ids=step_input, use_cache=True, **{kw: cache}).logits[:, -1]
            if not torch.isfinite(logits).all():  # NaN activations: top-1 keys and hits would be noise
                raise NonFiniteError("retrieval: the model's logits are NaN or infinite while generating; its "
                                     "activations are not finite (NaN/inf weights or embeddings, or a dtype overflow)")
            token = logits.argmax(-1)  # [T]
            top1 = rec.last_top1_index()  # [T, L, H] absolute key positions
            in_needle = (top1 >= spans[:, 0, None, None]) & (top1 < spans[:, 1, None, None])
            key_token = prompts.gather(1, top1.clamp(0, prompts.shape[1] - 1).reshape(T, -1)).reshape(top1.shape)
            hit = (in_needle & (key_token == token[:, None, None]) & alive[:, None, None]).long()
            hits = hit if hits is None else hits + hit
            if stop_token is not None:
                alive &= token != stop_token
            generated.append(token)
            step_input = token[:, None]
    return hits.cpu(), torch.stack(generated, 1).cpu()


@dataclass(frozen=True)
class Recipe:
    """How a convention reads a trial: hits count from needle token ``hit_from`` on, decoding runs
    ``n_steps`` tokens (stopping after ``stop_token``), ``recall(generated, answer)`` tests success."""

    hit_from: int
    n_steps: int
    stop_token: Optional[int]
    recall: Callable[[list[int], list[int]], float]


def recipe(o: dict, tokenizer) -> Recipe:
    """``circuit_stats``: hits on the whole needle, exactly the answer's tokens decoded, token-id
    recall. ``wu2024``: hits on the answer span, up to 50 tokens or a newline, ROUGE-1 recall of
    the decoded texts (see ``wu2024.py``)."""
    n_copy = int(o["needle_len"]) - int(o["prefix_len"])
    if o["convention"] != "wu2024":
        return Recipe(0, n_copy, None, token_recall)
    if tokenizer is None:
        raise ValueError("convention='wu2024' decodes the response to score it with ROUGE-1 as Wu et al. do: "
                         "pass tokenizer= (a transformers tokenizer, or 'bytes' for a byte-level model)")
    tok = resolve_tokenizer(tokenizer)
    stop = newline_token(lambda text: encode(tok, text, add_special_tokens=False))

    def recall(generated: list[int], answer: list[int]) -> float:
        response = decode(tok, generated[: first_stop(generated, stop)]).strip()
        return rouge1_recall(decode(tok, answer), response)

    return Recipe(int(o["prefix_len"]), MAX_NEW_TOKENS, stop, recall)


def run_trials(model, o: dict, how: Recipe, haystack: Sequence[int], candidates: np.ndarray,
               batch_size: Optional[int], bos_token_id: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Every trial of every context length, in batches of ``batch_size`` (default: one length's
    trials at once). Returns ``(scores [trials, L, H]`` hits per answer token, ``success [trials]``
    bool, one row per trial with its length, depth and recall)."""
    needle_len, prefix_len = int(o["needle_len"]), int(o["prefix_len"])
    n_copy = needle_len - prefix_len  # the answer span: the per-trial denominator in both conventions
    depths = [float(d) for d in o["depths"]]
    per_trial, success, rows = [], [], []
    for i, length in enumerate(int(n) for n in o["context_lengths"]):
        prompts, spans, needles = build_trials(haystack, length, depths, int(o["n_needles"]), needle_len,
                                               prefix_len, candidates, int(o["seed"]) + i, bos_token_id)
        spans = spans + torch.tensor([how.hit_from, 0])
        bs = batch_size or len(prompts)
        for s in range(0, len(prompts), bs):
            hits, generated = retrieval_hits(model, prompts[s:s + bs], spans[s:s + bs], how.n_steps,
                                             int(o["chunk_size"]), how.stop_token)
            for t in range(hits.shape[0]):
                recall = how.recall(generated[t].tolist(), needles[s + t, prefix_len:].tolist())
                per_trial.append(hits[t].double() / n_copy)
                success.append(recall > float(o["success_recall"]))
                rows.append(dict(context_length=length, depth=depths[(s + t) % len(depths)], recall=recall))
    return torch.stack(per_trial), torch.tensor(success), rows


def head_table(scores: torch.Tensor, copied: torch.Tensor, threshold: float) -> pd.DataFrame:
    """One row per (layer, head) from per-trial ``scores [trials, L, H]``: the mean score (and its
    SE) over the trials whose answer was ``copied`` (NaN when none was) and over all trials, and
    the label at ``threshold``."""
    _, L, H = scores.shape
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L)})
    nan = torch.full((L, H), float("nan"), dtype=torch.float64)
    on_copied = mean_se(scores[copied]) if copied.any() else (nan, nan)
    for col, (mean, se) in {"retrieval_score": on_copied, "retrieval_score_all_trials": mean_se(scores)}.items():
        df[col], df[se_column(col)] = mean.reshape(-1).numpy(), se.reshape(-1).numpy()
    df["is_retrieval"] = df["retrieval_score"].fillna(0.0).to_numpy() >= threshold
    df["label"] = np.where(df["is_retrieval"], RETRIEVAL, UNCLASSIFIED)
    return label_margins(df, {"retrieval_score": threshold}, {"retrieval_score": RETRIEVAL})


def score(model, *, tokenizer=None, texts=None, batch_size: Optional[int] = None, device=None,
          bos_token_id: Optional[int] = None, progress: bool = True, **options) -> pd.DataFrame:
    o = PROTOCOL.check_options(options)
    how = recipe(o, tokenizer)
    # the longest prompt plus the tokens decoded after it (the last one is never fed back)
    check_context(model, max(int(n) for n in o["context_lengths"]) + how.n_steps - 1, "protocol 'retrieval'")
    haystack = haystack_tokens(model, texts, tokenizer)
    candidates = needle_candidates(haystack, int(text_config(model.config).vocab_size), o["vocab_range"])
    was_training = model.training
    model.eval()
    try:
        scores, copied, rows = run_trials(model, o, how, haystack, candidates, batch_size, bos_token_id)
    finally:
        model.train(was_training)
    df = head_table(scores, copied, float(o["threshold"]))
    df.attrs.update(settings=dict(o, bos_token_id=bos_token_id, n_trials=len(rows), n_copied=int(copied.sum()),
                                  tokenizer=getattr(tokenizer, "name_or_path", None) or str(tokenizer)),
                    trials=rows)
    return df


PROTOCOL = Protocol(name="retrieval", score=score, defaults=DEFAULTS, takes_texts=True, validate=validate,
                    nan_scores=("retrieval_score",), needs_lm_head=True)
