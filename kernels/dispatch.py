"""Public entry point: validation and backend choice (``attention_with_stats``)."""

from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Sequence

import torch

from .chunked import attention_with_stats_chunked
from .side_inputs import SideInputs, check_offsets
from .stats import AttentionStats

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
    if D < 1:  # any head dim: the torch backend takes any, the Triton kernel pads on chip (<= 256)
        raise ValueError(f"head_dim must be >= 1, got {D}")
    Hkv, Nk = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q heads ({Hq}) must be a multiple of k/v heads ({Hkv})")
    if Nq > Nk:
        raise ValueError(f"q length ({Nq}) must not exceed k/v length ({Nk}): queries are the last Nq positions")
    if B == 0 or Nq == 0:
        raise ValueError(f"q must hold at least one batch row and one query, got shape {tuple(q.shape)}")


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
    side_inputs: Optional[SideInputs] = None,
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
        side_inputs: ``key_padding_mask``, ``token_ids`` and ``probe_keys`` already built with
            ``SideInputs.build`` (once per forward, for callers that run many layers over the
            same keys); then those three arguments must be None.

    Returns:
        ``(out [B, Hq, Nq, D] in q.dtype, AttentionStats)``; never the ``Nq x Nk`` matrix.
    """
    _check_qkv(q, k, v)
    offsets = check_offsets(offsets)
    if not isinstance(entropy, bool):
        raise TypeError(f"entropy must be a bool, got {type(entropy).__name__}")
    B, _, _, D = q.shape
    Nk = k.shape[2]
    if scale is None:
        scale = D ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite real number, got {scale!r}")
    backend = _resolve_backend(backend, q.device)
    if side_inputs is None:
        side_inputs = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=key_padding_mask,
                                       token_ids=token_ids, probe_keys=probe_keys)
    else:
        given = [n for n, t in (("key_padding_mask", key_padding_mask), ("token_ids", token_ids),
                                ("probe_keys", probe_keys)) if t is not None]
        if given:
            raise ValueError(f"pass {given} inside side_inputs, not beside it")
        side_inputs.check_matches(q, k)

    if backend == "triton":
        from .triton_attention import attention_with_stats_triton

        return attention_with_stats_triton(q, k, v, scale=float(scale), side=side_inputs, offsets=offsets, entropy=entropy)
    return attention_with_stats_chunked(q, k, v, scale=float(scale), side=side_inputs, offsets=offsets, entropy=entropy)
