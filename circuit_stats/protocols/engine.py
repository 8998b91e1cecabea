"""The batch engine: run a protocol's batches through the model inside one ``record()``."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..models.config import text_config
from ..models.context import check_context
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
    counts: dict[str, torch.Tensor] = field(default_factory=dict)  # {statistic: [seqs]} queries per row
    key_tokens: Optional[torch.Tensor] = None  # [seqs, positions] token ids of the keys (with key_mass)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def vocab_size(model: torch.nn.Module) -> int:
    config = text_config(model.config)
    return int(config.vocab_size)


def check_token_range(model: torch.nn.Module, low: int, high: int, what: str) -> None:
    """Raise unless token ids in ``[low, high)`` fit the model's vocabulary."""
    v = vocab_size(model)
    if high > v or low < 0:
        raise ValueError(f"{what}: token ids in [{low}, {high}) do not fit the model's vocabulary of {v}")


def check_bos_token_id(model: torch.nn.Module, bos_token_id) -> None:
    """Raise unless ``bos_token_id`` is None or an int id in the model's vocabulary (checked
    before any forward: an id outside it fails deep inside the embedding)."""
    if bos_token_id is None:
        return
    v = vocab_size(model)
    if isinstance(bos_token_id, bool) or not isinstance(bos_token_id, numbers.Integral):
        raise TypeError(f"bos_token_id must be an int token id (or None), got {bos_token_id!r}")
    if not 0 <= bos_token_id < v:
        raise ValueError(f"bos_token_id {bos_token_id} is outside the model's vocabulary of {v} (ids 0..{v - 1})")


def first_out_of_vocabulary(seqs: Sequence[Sequence[int]], vocab: int) -> Optional[tuple[int, int, int]]:
    """``(sequence, position, id)`` of the first id of ``seqs`` outside ``[0, vocab)``, or None."""
    for n, ids in enumerate(seqs):
        for pos, i in enumerate(ids):
            if not 0 <= i < vocab:
                return n, pos, i
    return None


def prepend_bos(ids: torch.Tensor, bos_token_id: Optional[int]) -> torch.Tensor:
    """Put ``bos_token_id`` in front of every row of ``ids [B, N]`` (no-op for None)."""
    if bos_token_id is None:
        return ids
    return torch.cat([torch.full_like(ids[:, :1], int(bos_token_id)), ids], dim=1)


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
    key_mass: bool = False,
    device: Optional[torch.device] = None,
    desc: str = "scoring",
    progress: bool = True,
) -> RunResult:
    """Run every batch through the model inside one ``record()`` and return the means
    (``[layers, heads]`` per statistic) and, with ``per_sample``, the per-row means
    (``[rows, layers, heads]``, rows in batch order) and the queries each averages (``[rows]``).
    ``key_mass``: also the attention received per key (``record(key_mass=True)``: ``key_mass`` and
    ``key_attention`` in the means and per-sample results, per key position) and the keys' token ids."""
    device = device or model_device(model)
    batches = list(batches)  # small id tensors: the longest is checked against the context before any forward
    if batches:
        check_context(model, max(b.input_ids.shape[1] for b in batches), f"protocol {desc!r}")
    was_training = model.training
    model.eval()

    def to_device(t):
        return None if t is None else t.to(device)

    try:
        with record(model, offsets=offsets, token_match=token_match, entropy=entropy, per_sample=per_sample,
                    key_mass=key_mass) as rec:
            for batch in tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
                qm = batch.query_mask
                qm = {k: to_device(v) for k, v in qm.items()} if isinstance(qm, dict) else to_device(qm)
                rec.set_inputs(query_mask=qm, probe_keys=to_device(batch.probe_keys))
                model(input_ids=to_device(batch.input_ids), attention_mask=to_device(batch.attention_mask),
                      use_cache=False)
        key_tokens = rec.key_tokens() if key_mass else None
        if not per_sample:
            return RunResult(rec.tensors(), key_tokens=key_tokens)
        return RunResult(rec.tensors(), rec.per_sample(), rec.per_sample_counts(), key_tokens=key_tokens)
    finally:
        model.train(was_training)
