"""``attn_implementation="circuit_stats"`` for Hugging Face transformers.

Two functions are registered:

* an attention function (``AttentionInterface``) that runs the fused kernel and, while a
  ``record()`` is active on the model, hands the statistics to the recorder;
* a mask function (``AttentionMaskInterface``). Without one, transformers builds no mask at
  all for an unknown implementation name. Ours returns what flash-attention kernels take: a
  ``[B, kv_len]`` key padding mask, or ``None`` when nothing is padded (the kernel applies the
  causal mask itself).
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    causal_mask_function,
    flash_attention_mask,
)

from ..kernels import attention_with_stats
from ..kernels.dispatch import BACKENDS
from . import recording
from .recording import IMPLEMENTATION

_BACKEND = "auto"


def set_backend(backend: str) -> None:
    """Kernel backend for the HF integration: ``"auto"`` (default: Triton on CUDA, chunked torch
    otherwise), ``"triton"`` or ``"torch"``."""
    global _BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _BACKEND = backend


def circuit_stats_mask(
    batch_size: int,
    *args,
    mask_function=causal_mask_function,
    attention_mask: Optional[torch.Tensor] = None,
    **kwargs,
) -> Optional[torch.Tensor]:
    """Key padding mask ``[B, kv_len]`` (True = attend) or ``None``; causality is the kernel's.

    transformers calls mask functions by keyword; the query window is ``q_length`` / ``q_offset``
    from 5.?? on and ``cache_position`` before (both are accepted)."""
    call = dict(kwargs, mask_function=mask_function, attention_mask=attention_mask)
    names = ("q_length", "kv_length", "q_offset", "kv_offset") if "cache_position" not in kwargs else (
        "cache_position", "kv_length", "kv_offset")
    call.update(zip(names, args))
    if mask_function is not causal_mask_function:
        raise NotImplementedError(
            "attn_implementation='circuit_stats' supports causal attention with left/right padding only; "
            "this call asked for another mask pattern (packed sequences, sliding window or a custom "
            "mask function). Use attn_implementation='sdpa' for it."
        )
    kv_length = int(call["kv_length"])
    if "cache_position" in call:
        positions = call["cache_position"]
        q_length, q_offset = int(positions.shape[0]), int(positions[0]) if positions.numel() else 0
    else:
        q_length, q_offset = int(call["q_length"]), int(call.get("q_offset", 0))
    # The kernel places query i at key position kv_length - q_length + i: the queries must be
    # the last positions of the keys, as with no cache or the default dynamic cache. A static
    # cache pads the keys to its maximum length, which would silently break causality.
    if q_offset + q_length != kv_length:
        raise NotImplementedError(
            f"attn_implementation='circuit_stats' needs the queries to be the last keys (query offset "
            f"{q_offset} + {q_length} queries != {kv_length} keys): static, offloaded-static and "
            "sliding-window caches are not supported; use the default dynamic cache."
        )
    return flash_attention_mask(batch_size, **call)


def _key_padding_mask(attention_mask: Optional[torch.Tensor], key: torch.Tensor) -> Optional[torch.Tensor]:
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            "attn_implementation='circuit_stats' expects the 2-D key padding mask that its mask function "
            f"builds, got a {attention_mask.dim()}-D attention_mask (a prepared 4-D mask cannot be honoured)."
        )
    if attention_mask.shape != (key.shape[0], key.shape[2]):
        raise ValueError(
            f"attention mask shape {tuple(attention_mask.shape)} does not match the keys "
            f"({key.shape[0]}, {key.shape[2]}); static / offloaded caches are not supported, use the default cache."
        )
    return attention_mask.to(torch.bool)


def _sdpa_for_grad(query, key, value, kpm, scale, dropout):
    """Differentiable output when gradients are needed (the fused kernel has no backward).
    Rows with no attendable key give zeros, as in the kernel, and no NaN gradient."""
    Nq, Nk = query.shape[2], key.shape[2]
    allowed = torch.ones(Nq, Nk, dtype=torch.bool, device=query.device).tril(Nk - Nq)[None, None]
    has_key = None
    if kpm is not None:
        allowed = allowed & kpm[:, None, None, :]
        has_key = allowed.any(-1, keepdim=True)  # [B, 1, Nq, 1]
        allowed = allowed | ~has_key  # let empty rows attend anywhere, then zero them below
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, dropout_p=dropout, scale=scale,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out if has_key is None else out * has_key


def circuit_stats_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention function with the ``AttentionInterface`` signature; returns ``[B, Nq, H, D]``."""
    if kwargs.get("output_attentions"):
        raise ValueError(
            "attn_implementation='circuit_stats' never materialises attention probabilities, so "
            "output_attentions=True is not supported. Use `with circuit_stats.record(model, ...) as rec:` "
            "to collect per-head statistics, or attn_implementation='eager' for full matrices."
        )
    # Extra score terms some models pass; ignoring any of them would silently change attention.
    for unsupported in ("sliding_window", "softcap", "s_aux", "position_bias", "cu_seq_lens_q", "cu_seq_lens_k"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(
                f"attn_implementation='circuit_stats' does not support {unsupported!r} (a model-specific attention "
                "term or packed/varlen input); use attn_implementation='sdpa' for this model")
    if not getattr(module, "is_causal", True):
        raise NotImplementedError("attn_implementation='circuit_stats' supports causal (decoder) attention only")

    kpm = _key_padding_mask(attention_mask, key)
    request = recording.request_for(module, query, key, kpm)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))

    if needs_grad or dropout > 0:
        out = _sdpa_for_grad(query, key, value, kpm, scaling, dropout)
        if request is not None:
            with torch.no_grad():
                _, stats = attention_with_stats(query, key, value, scale=scaling, backend=_BACKEND,
                                                **request.kernel_kwargs)
            request.deliver(stats)
    else:
        # Inside record() the request carries the padding mask in its side inputs.
        kernel_kwargs = request.kernel_kwargs if request is not None else {"key_padding_mask": kpm}
        out, stats = attention_with_stats(query, key, value, scale=scaling, backend=_BACKEND, **kernel_kwargs)
        if request is not None:
            request.deliver(stats)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register the attention and mask functions under ``"circuit_stats"`` (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, circuit_stats_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, circuit_stats_mask)
