"""Key scores for KV-cache compression studies (H2O, TOVA, SnapKV): ``key_scores``.

H2O scores each key of a document by the attention it has received, summed over every query
(its "accumulated attention"); SnapKV sums over an observation window, the last ``W`` queries
only. Both come from one fused forward (``record(key_mass=True)``), exactly, at any length (the
document can be fed in chunks through the KV cache): never the ``N x N`` attention matrix.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Optional, Union

import pandas as pd
import torch
from transformers import DynamicCache

from .atomic import atomic_write
from .models.context import check_context
from .models.recording import record
from .profiling.prefill import cache_keyword

SCORE_COLUMNS = ("layer", "head", "position", "token_id", "score")


def check_document(input_ids) -> torch.Tensor:
    """``input_ids`` as ``[1, N]`` int64: one document, ``[N]`` or ``[1, N]`` token ids, N >= 1."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor of token ids, got {type(input_ids).__name__}"
                        f"{'' if not isinstance(input_ids, torch.Tensor) else ' of ' + str(input_ids.dtype)}")
    if input_ids.dim() > 2 or (input_ids.dim() == 2 and input_ids.shape[0] != 1) or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be one document, [n_tokens] or [1, n_tokens] with n_tokens >= 1, "
                         f"got shape {tuple(input_ids.shape)}")
    return input_ids.reshape(1, -1).long()


def check_positive(name: str, value, high: Optional[int] = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1 or (high is not None and value > high):
        limit = "" if high is None else f" and <= {high} (the document's length)"
        raise ValueError(f"{name} must be an int >= 1{limit} (or None), got {value!r}")


@torch.no_grad()
def key_scores(model: torch.nn.Module, input_ids: torch.Tensor, *, window: Optional[int] = None,
               chunk_size: Optional[int] = None, out: Optional[Union[str, Path]] = None) -> torch.Tensor:
    """``[layers, heads, N]`` float32: for every key of one document, the attention it receives
    summed over the document's queries (H2O), or over its last ``window`` queries (SnapKV's
    observation window). Heads are query heads (with GQA, sum a group for its KV head).

    Args:
        model: a transformers model with ``attn_implementation="circuit_stats"``.
        input_ids: ``[N]`` or ``[1, N]`` token ids (no padding).
        window: count only the queries at positions ``>= N - window`` (None: every query).
        chunk_size: feed the document ``chunk_size`` tokens at a time through a ``DynamicCache``
            (bounded activation memory; the scores are the same).
        out: also write a parquet table with columns ``layer, head, position, token_id, score``
            (written atomically: the old file or the complete new one).
    """
    ids = check_document(input_ids)
    N = ids.shape[1]
    check_positive("window", window, N)
    check_positive("chunk_size", chunk_size)
    if out is not None and Path(out).suffix != ".parquet":
        raise ValueError(f"out must be a .parquet path, got {str(out)!r}")
    device = next(model.parameters()).device
    ids, step = ids.to(device), chunk_size or N
    counted = torch.arange(N, device=device) >= N - (window or N)  # the queries that count
    check_context(model, N, "key_scores")
    cache = {} if step >= N else {cache_keyword(model): DynamicCache()}
    was_training = model.training
    model.eval()
    try:
        with record(model, key_mass=True) as rec:
            for start in range(0, N, step):
                rec.set_inputs(query_mask={"key_mass": counted[None, start:start + step]})
                model(input_ids=ids[:, start:start + step], use_cache=step < N, **cache)
    finally:
        model.train(was_training)
    scores = rec.tensors()["key_mass"]
    if out is not None:
        atomic_write(Path(out), score_table(scores, ids[0].cpu()).to_parquet)
    return scores


def score_table(scores: torch.Tensor, token_ids: torch.Tensor) -> pd.DataFrame:
    """Long table of ``scores [L, H, N]``: one row per (layer, head, position)."""
    L, H, N = scores.shape
    grid = torch.cartesian_prod(torch.arange(L), torch.arange(H), torch.arange(N))
    return pd.DataFrame({"layer": grid[:, 0].numpy(), "head": grid[:, 1].numpy(), "position": grid[:, 2].numpy(),
                         "token_id": token_ids[grid[:, 2]].numpy(), "score": scores.reshape(-1).numpy()})
