"""Query positions and position bins for position-resolved recording (``record(position_bins=...)``).

A query's position is counted from the first real (non-padded) token of its sequence: the number
of attendable keys before it. With left padding this is what ``generate()`` feeds the model as
``position_ids`` (``attention_mask.cumsum(-1) - 1``), so bins mean the same thing for padded and
unpadded rows; a forward that extends a KV cache continues the count.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch

LOG2 = "log2"
# "log2" bins: [0, 1), [1, 2), [2, 4), ..., [2^39, 2^40), [2^40, inf): position 0 (the first
# token, where every head attends to itself) has its own bin.
LOG2_EDGES: tuple[float, ...] = (0.0,) + tuple(float(2**k) for k in range(41)) + (math.inf,)

BinSpec = Union[str, Sequence[Union[int, float]]]


def bin_edges(position_bins: BinSpec, name: str = "position_bins") -> tuple[float, ...]:
    """Edges ``e_0 < e_1 < ... < e_m`` of the bins ``[e_k, e_{k+1})``; a clear error otherwise.

    ``"log2"`` gives ``[0, 1), [1, 2), [2, 4), ...``; explicit edges are non-negative ints in
    increasing order, the last one may be ``math.inf``. Queries outside ``[e_0, e_m)`` are in no bin.
    ``name``: the argument the errors name (``key_bins`` takes the same spec).
    """
    if isinstance(position_bins, str):
        if position_bins != LOG2:
            raise ValueError(f"{name} must be 'log2' or a list of increasing edges, got {position_bins!r}")
        return LOG2_EDGES
    if isinstance(position_bins, (bytes, torch.Tensor)) or not isinstance(position_bins, Sequence):
        raise TypeError(f"{name} must be 'log2' or a list of increasing edges, got {type(position_bins).__name__}")
    edges = []
    for i, e in enumerate(position_bins):
        last = i == len(position_bins) - 1
        integral = isinstance(e, numbers.Integral) or (isinstance(e, float) and e.is_integer())
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not (integral or (last and e == math.inf)):
            raise TypeError(f"{name} edges must be ints (the last may be math.inf), got {e!r}")
        edges.append(float(e))
    if len(edges) < 2:
        raise ValueError(f"{name} needs at least two edges (one bin), got {list(position_bins)}")
    if edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"{name} edges must be >= 0 and strictly increasing, got {list(position_bins)}")
    return tuple(edges)


def query_positions(key_padding_mask: Optional[torch.Tensor], batch: int, q_len: int, k_len: int,
                    device: torch.device) -> torch.Tensor:
    """``[B, Nq]`` int64 position of each query from its sequence's first real token (-1 for a
    padded query). Query ``i`` is key ``k_len - q_len + i`` (queries are the last keys)."""
    if key_padding_mask is None:
        return torch.arange(k_len - q_len, k_len, device=device).expand(batch, q_len)
    real_before = key_padding_mask.long().cumsum(-1) - 1  # [B, Nk]
    pos = real_before[:, k_len - q_len:]
    return torch.where(key_padding_mask[:, k_len - q_len:], pos, torch.full_like(pos, -1))


def bin_weights(positions: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """``[B, Nq, K]`` float64 one-hot of each query's bin (all zero outside every bin or padded)."""
    edges_t = torch.tensor(edges, dtype=torch.float64, device=positions.device)
    idx = torch.bucketize(positions.to(torch.float64), edges_t, right=True) - 1  # [B, Nq]
    K = len(edges) - 1
    valid = (positions >= 0) & (idx >= 0) & (idx < K)
    onehot = idx[..., None] == torch.arange(K, device=positions.device)
    return (onehot & valid[..., None]).to(torch.float64)


def bin_bounds(edges: Sequence[float]) -> list[tuple[int, Optional[int]]]:
    """``(lo, hi)`` of every bin as ints (``hi`` None for an open last bin)."""
    return [(int(lo), None if math.isinf(hi) else int(hi)) for lo, hi in zip(edges, edges[1:])]
