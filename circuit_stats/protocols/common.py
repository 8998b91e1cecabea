"""Pieces every protocol shares: running batches under one recording, texts and labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable, Mapping, Optional, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..models.recording import record


@dataclass
class Batch:
    """One forward's inputs and the per-forward recording inputs that go with it."""

    input_ids: torch.Tensor
    attention_mask: Optional[torch.Tensor] = None
    query_mask: object = None  # tensor or {statistic: tensor}, see record()
    probe_keys: Optional[torch.Tensor] = None


@dataclass
class RunResult:
    means: dict[str, torch.Tensor]  # {statistic: [layers, heads]}
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # {statistic: [seqs, L, H]}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def vocab_size(model: torch.nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.vocab_size)


@torch.no_grad()
def run_batches(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    total: Optional[int] = None,
    offsets: Sequence[int] = (),
    token_match: bool = False,
    entropy: bool = False,
    per_sample: bool = False,
    device: Optional[torch.device] = None,
    desc: str = "scoring",
    progress: bool = True,
) -> RunResult:
    """Run every batch through the model inside one ``record()`` and return the means."""
    device = device or model_device(model)
    was_training = model.training
    model.eval()
    try:
        with record(model, offsets=offsets, token_match=token_match, entropy=entropy, per_sample=per_sample) as rec:
            for batch in tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
                mv = lambda t: None if t is None else t.to(device)  # noqa: E731
                qm = batch.query_mask
                qm = {k: mv(v) for k, v in qm.items()} if isinstance(qm, dict) else mv(qm)
                rec.set_inputs(query_mask=qm, probe_keys=mv(batch.probe_keys))
                model(input_ids=mv(batch.input_ids), attention_mask=mv(batch.attention_mask), use_cache=False)
        return RunResult(rec.tensors(), rec.per_sample() if per_sample else {})
    finally:
        model.train(was_training)


def prepend_bos(ids: torch.Tensor, bos_token_id: Optional[int]) -> torch.Tensor:
    """Put ``bos_token_id`` in front of every row (no-op for None)."""
    if bos_token_id is None:
        return ids
    return torch.cat([torch.full_like(ids[:, :1], int(bos_token_id)), ids], dim=1)


def check_token_range(model: torch.nn.Module, low: int, high: int, what: str) -> None:
    v = vocab_size(model)
    if high > v or low < 0:
        raise ValueError(f"{what}: token ids in [{low}, {high}) do not fit the model's vocabulary of {v}")


def head_frame(n_layers: int, n_heads: int) -> pd.DataFrame:
    return pd.DataFrame({
        "layer": [layer for layer in range(n_layers) for _ in range(n_heads)],
        "head": [h for _ in range(n_layers) for h in range(n_heads)],
    })


def flat(t: torch.Tensor):
    return t.reshape(-1).double().numpy()


# ---------------------------------------------------------------- texts
class ByteTokenizer:
    """UTF-8 bytes as token ids: the fallback when no tokenizer is given (needs vocab >= 256,
    or >= 128 for ASCII text). The bundled demo model is trained on this encoding."""

    def __call__(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def default_texts() -> list[str]:
    """The bundled text sample (written for the project), one passage per paragraph."""
    raw = resources.files("circuit_stats").joinpath("data/sample_texts.txt").read_text(encoding="utf-8")
    return [p.strip().replace("\n", " ") for p in raw.split("\n\n") if p.strip()]


def tokenize_texts(texts, tokenizer, model) -> list[list[int]]:
    """Token id lists from ``texts`` (strings, or already token ids) with ``tokenizer``."""
    if texts is None:
        texts = default_texts()
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings or of token-id lists, not one string")
    out = []
    tok = tokenizer or ByteTokenizer()
    for t in texts:
        if isinstance(t, str):
            ids = tok(t)
            if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):  # a transformers tokenizer
                ids = ids["input_ids"]
            ids = list(ids)
        elif isinstance(t, torch.Tensor):
            ids = t.reshape(-1).tolist()
        else:
            ids = [int(x) for x in t]
        if ids:
            out.append(ids)
    if not out:
        raise ValueError("texts: no tokens to score")
    v = vocab_size(model)
    top = max(max(ids) for ids in out)
    if top >= v:
        raise ValueError(f"texts: token id {top} does not fit the model's vocabulary of {v}"
                         + ("" if tokenizer else " (no tokenizer given: bytes were used; pass tokenizer=)"))
    return out


def text_batches(seqs: Sequence[Sequence[int]], batch_size: int, bos_token_id: Optional[int]) -> Iterable[Batch]:
    """Right-padded batches of token-id lists, each optionally behind a BOS-like token."""
    for s in range(0, len(seqs), batch_size):
        ids, mask = pad_right(seqs[s : s + batch_size])
        if bos_token_id is not None:
            ids, mask = prepend_bos(ids, bos_token_id), prepend_bos(mask, 1)
        yield Batch(ids, mask)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask for a list of token-id lists."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s))
        mask[i, : len(s)] = 1
    return ids, mask
