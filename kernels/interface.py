"""Public entry point: validation, backend choice and the small host-side preparation."""

from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Sequence

import torch

from .chunked import attention_with_stats_chunked
from .stats import AttentionStats

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKENDS = ("auto", "torch", "triton")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [batch, heads, seq, head_dim], got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, Nq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != B:
        raise ValueError(f"k/v batch size {k.shape[0]} does not match q batch size {B}")
    if k.shape[3] != D:
        raise ValueError(f"k/v head_dim {k.shape[3]} does not match q head_dim {D}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {D}")
    Hkv, Nk = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q heads ({Hq}) must be a multiple of k/v heads ({Hkv})")
    if Nq > Nk:
        raise ValueError(f"q length ({Nq}) must not exceed k/v length ({Nk}): queries are the last Nq positions")
    if B == 0 or Nq == 0:
        raise ValueError(f"q must hold at least one batch row and one query, got shape {tuple(q.shape)}")


def _check_offsets(offsets: Sequence[int]) -> tuple[int, ...]:
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Sequence):
        raise TypeError(f"offsets must be a sequence of ints, got {type(offsets).__name__}")
    out = []
    for o in offsets:
        if isinstance(o, bool) or not isinstance(o, numbers.Integral):
            raise TypeError(f"offsets must hold ints, got {o!r}")
        if o < 0:
            raise ValueError(f"offsets must be >= 0 (key i - o for query i), got {o}")
        out.append(int(o))
    return tuple(out)


def _check_side_inputs(q, k, key_padding_mask, token_ids, probe_keys, check_values: bool) -> None:
    B, Nk = q.shape[0], k.shape[2]
    if probe_keys is not None:
        if not isinstance(probe_keys, torch.Tensor) or probe_keys.dtype.is_floating_point or probe_keys.dtype == torch.bool:
            raise TypeError("probe_keys must be an integer tensor [batch, n_probes] of key positions")
        if probe_keys.dim() != 2 or probe_keys.shape[0] != B or probe_keys.shape[1] == 0:
            raise ValueError(f"probe_keys must have shape ({B}, n_probes >= 1), got {tuple(probe_keys.shape)}")
        if probe_keys.device != q.device:
            raise ValueError(f"probe_keys is on {probe_keys.device}, q on {q.device}")
        if check_values and (int(probe_keys.min()) < 0 or int(probe_keys.max()) >= Nk):
            raise ValueError(f"probe_keys must be key positions in [0, {Nk}), got values in "
                             f"[{int(probe_keys.min())}, {int(probe_keys.max())}]")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError("key_padding_mask must be a bool tensor [batch, k_len] (True = attend)")
        if tuple(key_padding_mask.shape) != (B, Nk):
            raise ValueError(f"key_padding_mask must have shape {(B, Nk)}, got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device}, q on {q.device}")
    if token_ids is not None:
        if not isinstance(token_ids, torch.Tensor) or token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
            raise TypeError("token_ids must be an integer tensor [batch, k_len]")
        if tuple(token_ids.shape) != (B, Nk):
            raise ValueError(f"token_ids must have shape {(B, Nk)} (one id per key), got {tuple(token_ids.shape)}")
        if token_ids.device != q.device:
            raise ValueError(f"token_ids is on {token_ids.device}, q on {q.device}")
        if check_values and token_ids.numel() and int(token_ids.min()) < 0:
            raise ValueError("token_ids must be non-negative token ids")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before circuit_stats is "
            "imported to run the kernel on the CPU; use backend='torch' otherwise"
        )
    return backend


def first_attendable_key(key_padding_mask: Optional[torch.Tensor], batch: int, k_len: int, device) -> torch.Tensor:
    """Index of each row's first attendable key, ``k_len`` where there is none."""
    if key_padding_mask is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    first = key_padding_mask.long().argmax(-1)
    return torch.where(key_padding_mask.any(-1), first, torch.full_like(first, k_len))


def previous_token_ids(token_ids: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``tok[j-1]`` where key j-1 exists and is attendable, else -1 (matches no token)."""
    prev = torch.full_like(token_ids, -1)
    prev[:, 1:] = token_ids[:, :-1]
    if key_padding_mask is not None:
        prev[:, 1:] = torch.where(key_padding_mask[:, :-1], prev[:, 1:], -1)
    return prev


def attention_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    offsets: Sequence[int] = (),
    probe_keys: Optional[torch.Tensor] = None,
    token_ids: Optional[torch.Tensor] = None,
    entropy: bool = False,
    backend: str = "auto",
    check_values: bool = True,
) -> tuple[torch.Tensor, AttentionStats]:
    """Causal attention that also returns per-row attention statistics, in one pass.

    Args:
        q: ``[B, Hq, Nq, D]`` queries; query ``i`` sits at key position ``Nk - Nq + i``.
        k, v: ``[B, Hkv, Nk, D]``; ``Hq`` must be a multiple of ``Hkv`` (GQA / MQA).
        scale: score scale, default ``D ** -0.5``.
        key_padding_mask: ``[B, Nk]`` bool, True where a key may be attended.
        offsets: fixed diagonal offsets ``o >= 0``; returns the probability on key ``i - o``.
        probe_keys: ``[B, P]`` absolute key positions (per batch row); returns every query's
            probability on each of them (0 where the query may not attend that key).
        token_ids: ``[B, Nk]`` token ids; when given, token-match induction and duplicate mass.
        entropy: also return each row's entropy (nats).
        backend: ``"triton"``, ``"torch"`` (chunked, O(chunk x Nk) memory) or ``"auto"``
            (Triton for CUDA tensors, torch otherwise).
        check_values: also check values of ``token_ids`` (>= 0) and ``probe_keys`` (in range).
            These reads synchronise a GPU; callers that validated once (the HF integration
            does, once per forward) pass False.

    Returns:
        ``(out [B, Hq, Nq, D] in q.dtype, AttentionStats)``; never the ``Nq x Nk`` matrix.
    """
    _check_qkv(q, k, v)
    offsets = _check_offsets(offsets)
    _check_side_inputs(q, k, key_padding_mask, token_ids, probe_keys, check_values)
    if not isinstance(entropy, bool):
        raise TypeError(f"entropy must be a bool, got {type(entropy).__name__}")
    B, _, _, D = q.shape
    Nk = k.shape[2]
    if scale is None:
        scale = D ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite real number, got {scale!r}")
    backend = _resolve_backend(backend, q.device)

    first = first_attendable_key(key_padding_mask, B, Nk, q.device)
    prev = previous_token_ids(token_ids, key_padding_mask) if token_ids is not None else None
    kwargs = dict(
        scale=float(scale), key_padding_mask=key_padding_mask, first_key=first, offsets=offsets, probe_keys=probe_keys,
        token_ids=token_ids, prev_token_ids=prev, entropy=entropy,
    )
    if backend == "triton":
        from .triton_attention import attention_with_stats_triton

        return attention_with_stats_triton(q, k, v, **kwargs)
    return attention_with_stats_chunked(q, k, v, **kwargs)
