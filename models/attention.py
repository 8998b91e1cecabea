"""``attn_implementation="circuit_stats"`` for Hugging Face transformers.

Two functions are registered:

* an attention function (``AttentionInterface``) that runs the fused kernel and, while a
  ``record()`` is active on the model, hands the statistics to the recorder;
* a mask function (``AttentionMaskInterface``). Without one, transformers builds no mask at
  all for an unknown implementation name. Ours returns what flash-attention kernels take: a
  ``[B, kv_len]`` key padding mask, or ``None`` when nothing is padded (the kernel applies the
  causal mask itself). For a sliding-window layer it returns the key padding mask over every
  position seen so far, tagged with the window (see ``sliding_window_of``): the kernel applies
  the window, so each layer of a model that alternates local and global layers gets its own
  pattern.

Score modifiers that transformers passes to the attention function map onto kernel arguments:
``sliding_window`` -> ``window``, ``softcap`` -> ``softcap``, ``s_aux`` (gpt-oss learned sinks)
-> ``sinks``. A modifier the installed kernel does not take is refused, never ignored.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    causal_mask_function,
    flash_attention_mask,
)

from ..kernels import SideInputs, attention_with_stats
from ..kernels.dispatch import BACKENDS, attention_output
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


# The attribute under which the mask function tags a sliding-window key padding mask with its window.
WINDOW_ATTRIBUTE = "circuit_stats_window"
# The attribute under which the mask function gives the (fresh) mask of one forward a cache of the
# padding side inputs its layers share outside record(): {(key offset, keys, device): SideInputs}.
SIDE_INPUTS_ATTRIBUTE = "circuit_stats_side_inputs"
# Query rows on which a non-causal mask function is checked against the sliding-window pattern.
_CHECKED_QUERY_ROWS = 16


def sliding_window_of(attention_mask) -> Optional[int]:
    """The window our mask function tagged ``attention_mask`` with, or None (full causal)."""
    return getattr(attention_mask, WINDOW_ATTRIBUTE, None)


def _pattern_window(mask_function, window: Optional[int], batch_size: int, q_offset: int, q_length: int,
                    kv_offset: int, kv_length: int, device) -> Optional[int]:
    """Check that ``mask_function`` is causal, restricted to ``window`` keys when given
    (transformers' ``sliding_window_causal_mask_function``: key j is visible from query i iff
    ``i - window < j <= i``), on a sample of query rows and every key; return the window.

    Anything else (packed sequences, chunked attention, image-token blocks, custom masks)
    raises NotImplementedError: the kernel could not honour it."""
    refusal = NotImplementedError(
        "attn_implementation='circuit_stats' supports causal attention, optionally with a sliding window, and "
        "left/right padding; this call asked for another mask pattern (packed sequences, chunked attention, "
        "bidirectional blocks or a custom mask function). Use attn_implementation='sdpa' for it.")
    rows = torch.linspace(0, q_length - 1, min(q_length, _CHECKED_QUERY_ROWS), device=device).round().long()
    q_idx = (q_offset + rows)[None, None, :, None]
    kv_idx = (kv_offset + torch.arange(kv_length, device=device))[None, None, None, :]
    b_idx = torch.arange(batch_size, device=device)[:, None, None, None]
    h_idx = torch.zeros(1, dtype=torch.long, device=device)[None, :, None, None]
    try:
        got = torch.as_tensor(mask_function(b_idx, h_idx, q_idx, kv_idx), device=device)
    except Exception as err:  # a mask function that is not index-based (vmap only)
        raise refusal from err
    want = kv_idx <= q_idx
    if window is not None:
        want = want & (kv_idx > q_idx - window)
    if not torch.equal(got.expand(batch_size, 1, rows.numel(), kv_length), want.expand(batch_size, 1, -1, -1)):
        raise refusal
    return window


def _first_query_position(cache_position: torch.Tensor, attention_mask: Optional[torch.Tensor], q_length: int) -> int:
    """``cache_position[0]`` without reading the (device) tensor where transformers' contract gives
    it: a 2-D ``attention_mask`` covers every position seen so far, the queries last, so the first
    query sits at its length minus ``q_length``. Otherwise it is read (a host synchronisation on
    a GPU)."""
    if attention_mask is not None and attention_mask.dim() == 2:
        return attention_mask.shape[1] - q_length
    return int(cache_position[0]) if cache_position.numel() else 0


def circuit_stats_mask(
    batch_size: int,
    *args,
    mask_function=causal_mask_function,
    attention_mask: Optional[torch.Tensor] = None,
    **kwargs,
) -> Optional[torch.Tensor]:
    """Key padding mask ``[B, kv_len]`` (True = attend) or ``None``; causality is the kernel's.

    For a sliding-window mask (transformers passes the window as ``local_size``) the mask always
    covers every position seen so far, ``[B, kv_offset + kv_len]``: a sliding-window cache keeps
    only the last ``window - 1`` keys (``kv_offset`` > 0), and ``record()`` needs the absolute
    positions. It is tagged with the window (``sliding_window_of``), which the attention function
    applies. transformers calls mask functions by keyword; the query window is ``q_length`` /
    ``q_offset`` from 5.?? on and ``cache_position`` before (both are accepted)."""
    call = dict(kwargs, mask_function=mask_function, attention_mask=attention_mask)
    names = ("q_length", "kv_length", "q_offset", "kv_offset") if "cache_position" not in kwargs else (
        "cache_position", "kv_length", "kv_offset")
    call.update(zip(names, args))
    kv_length, kv_offset = int(call["kv_length"]), int(call.get("kv_offset", 0))
    if "cache_position" in call:
        positions = call["cache_position"]
        q_length = int(positions.shape[0])
        q_offset = _first_query_position(positions, attention_mask, q_length)
        device = positions.device
    else:
        q_length, q_offset = int(call["q_length"]), int(call.get("q_offset", 0))
        device = kwargs.get("device", attention_mask.device if attention_mask is not None else "cpu")
    window = None
    if mask_function is not causal_mask_function:
        window = _pattern_window(mask_function, kwargs.get("local_size"), batch_size, q_offset, q_length,
                                 kv_offset, kv_length, device)
    # The kernel places query i at key position kv_length - q_length + i: the queries must be
    # the last positions of the keys, as with no cache, the default dynamic cache or its
    # sliding-window layers. A static cache pads the keys to its maximum length, which would
    # silently break causality.
    if q_offset + q_length != kv_offset + kv_length or (window is None and kv_offset != 0):
        raise NotImplementedError(
            f"attn_implementation='circuit_stats' needs the queries to be the last keys (query offset "
            f"{q_offset} + {q_length} queries != key offset {kv_offset} + {kv_length} keys): static and "
            "offloaded-static caches are not supported; use the default dynamic cache.")
    if window is None:
        return _with_side_inputs_cache(flash_attention_mask(batch_size, **call))
    seen = kv_offset + kv_length
    if attention_mask is None:
        kpm = torch.ones(batch_size, seen, dtype=torch.bool, device=device)
    else:
        if attention_mask.dim() != 2 or attention_mask.shape[1] < seen:
            raise NotImplementedError(
                "attn_implementation='circuit_stats' needs a 2-D attention_mask covering every position "
                f"seen so far ({seen}) for sliding-window layers, got shape {tuple(attention_mask.shape)}")
        kpm = attention_mask[:, attention_mask.shape[1] - seen:].to(torch.bool)
    setattr(kpm, WINDOW_ATTRIBUTE, window)
    return _with_side_inputs_cache(kpm)


def _with_side_inputs_cache(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``mask`` as a new bool tensor object (a view where it is bool already: no copy) that
    carries an empty side-inputs cache (``SIDE_INPUTS_ATTRIBUTE``): the mask function runs once
    per forward, so the cache lives for one forward and never outlives a change of the caller's
    mask."""
    if mask is None:
        return None
    fresh = mask[:] if mask.dtype == torch.bool else mask.to(torch.bool)
    if hasattr(mask, WINDOW_ATTRIBUTE):
        setattr(fresh, WINDOW_ATTRIBUTE, getattr(mask, WINDOW_ATTRIBUTE))
    setattr(fresh, SIDE_INPUTS_ATTRIBUTE, {})
    return fresh


@functools.lru_cache(maxsize=64)
def _unpadded_side_inputs(batch: int, k_len: int, device: torch.device) -> SideInputs:
    """The side inputs of ``batch`` unpadded rows of ``k_len`` keys (read-only, shared)."""
    return SideInputs.build(batch=batch, k_len=k_len, device=device)


def _padding_side_inputs(attention_mask: Optional[torch.Tensor], kpm: Optional[torch.Tensor], key_offset: int,
                         key: torch.Tensor) -> SideInputs:
    """The padding side inputs of a layer outside ``record()``: built once per forward and device
    (cached on the forward's mask, see ``_with_side_inputs_cache``), or per call for a mask that
    our mask function did not make."""
    B, Nk = key.shape[0], key.shape[2]
    if kpm is None:
        return _unpadded_side_inputs(B, Nk, key.device)
    cache = getattr(attention_mask, SIDE_INPUTS_ATTRIBUTE, None)
    if cache is None:
        return SideInputs.build(batch=B, k_len=Nk, device=key.device, key_padding_mask=kpm)
    slot = (key_offset, Nk, key.device)
    if slot not in cache:
        cache[slot] = SideInputs.build(batch=B, k_len=Nk, device=key.device, key_padding_mask=kpm)
    return cache[slot]


def _key_padding_mask(attention_mask: Optional[torch.Tensor], key: torch.Tensor) -> tuple[Optional[torch.Tensor], int]:
    """(key padding mask ``[B, key_offset + Nk]``, key_offset): ``key_offset`` > 0 when a
    sliding-window cache dropped the first keys (the mask then still covers them)."""
    if attention_mask is None:
        return None, 0
    if attention_mask.dim() != 2:
        raise ValueError(
            "attn_implementation='circuit_stats' expects the 2-D key padding mask that its mask function "
            f"builds, got a {attention_mask.dim()}-D attention_mask (a prepared 4-D mask cannot be honoured).")
    key_offset = attention_mask.shape[1] - key.shape[2] if sliding_window_of(attention_mask) is not None else 0
    if attention_mask.shape[0] != key.shape[0] or key_offset < 0 or attention_mask.shape[1] != key_offset + key.shape[2]:
        raise ValueError(
            f"attention mask shape {tuple(attention_mask.shape)} does not match the keys "
            f"({key.shape[0]}, {key.shape[2]}); static / offloaded caches are not supported, use the default cache.")
    return attention_mask.to(torch.bool), key_offset


def _differentiable_attention(query, key, value, kpm, scale, dropout, window=None, softcap=None, sinks=None):
    """Differentiable output when gradients are needed (the fused kernel has no backward): SDPA,
    or materialised scores when the model caps them or has learned sinks. Rows with no
    attendable key give zeros, as in the kernel, and no NaN gradient."""
    Nq, Nk = query.shape[2], key.shape[2]
    allowed = torch.ones(Nq, Nk, dtype=torch.bool, device=query.device).tril(Nk - Nq)
    if window is not None:
        allowed = allowed & ~torch.ones_like(allowed).tril(Nk - Nq - window)
    allowed = allowed[None, None]
    has_key = None
    if kpm is not None:
        allowed = allowed & kpm[:, None, None, :]
    if kpm is not None or window is not None:
        has_key = allowed.any(-1, keepdim=True)  # [B, 1, Nq, 1]
        allowed = allowed | ~has_key  # let empty rows attend anywhere, then zero them below
    if softcap is None and sinks is None:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, dropout_p=dropout, scale=scale,
            enable_gqa=query.shape[1] != key.shape[1])
    else:
        group = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
        scores = query @ key.transpose(-1, -2) * (scale if scale is not None else query.shape[-1] ** -0.5)
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        scores = scores.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            sink = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(scores.shape[0], -1, Nq, 1)
            probs = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
        else:
            probs = torch.softmax(scores, -1)
        probs = torch.nn.functional.dropout(probs, p=dropout, training=dropout > 0)
        out = probs.to(value.dtype) @ value
    return out if has_key is None else out * has_key


# Score modifiers transformers passes to attention functions -> the kernel arguments they map to.
MODIFIERS = {"sliding_window": "window", "softcap": "softcap", "s_aux": "sinks"}
# Which of those the installed kernel takes (the torch and Triton backends gain them one by one).
KERNEL_MODIFIERS = frozenset(MODIFIERS.values()) & frozenset(inspect.signature(attention_with_stats).parameters)


def _layer_window(module, requested: Optional[int], attention_mask) -> Optional[int]:
    """The layer's sliding window: transformers' ``sliding_window`` argument, checked against the
    window the mask was built with (some models, e.g. Qwen2-MoE, build a sliding-window mask for
    their local layers without passing the argument; eager attention then applies the mask's)."""
    tagged = sliding_window_of(attention_mask)
    if requested is not None and tagged is not None and int(requested) != int(tagged):
        raise ValueError(
            f"{type(module).__name__} passed sliding_window={requested} but its mask was built with a window "
            f"of {tagged}; circuit_stats cannot tell which one the model means")
    window = requested if requested is not None else tagged
    if window is not None and (isinstance(window, bool) or int(window) != window or window < 1):
        raise ValueError(f"sliding_window must be an int >= 1, got {window!r}")
    return None if window is None else int(window)


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
    """Attention function with the ``AttentionInterface`` signature; returns ``[B, Nq, H, D]``.

    ``sliding_window`` (int), ``softcap`` (float) and ``s_aux`` (``[Hq]`` learned sink logits)
    become the kernel's ``window``, ``softcap`` and ``sinks``."""
    if kwargs.get("output_attentions"):
        raise ValueError(
            "attn_implementation='circuit_stats' never materialises attention probabilities, so "
            "output_attentions=True is not supported. Use `with circuit_stats.record(model, ...) as rec:` "
            "to collect per-head statistics, or attn_implementation='eager' for full matrices."
        )
    # Extra score terms some models pass; ignoring any of them would silently change attention.
    for unsupported in ("position_bias", "cu_seq_lens_q", "cu_seq_lens_k"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(
                f"attn_implementation='circuit_stats' does not support {unsupported!r} (a model-specific attention "
                "term or packed/varlen input); use attn_implementation='sdpa' for this model")
    if not getattr(module, "is_causal", True):
        raise NotImplementedError("attn_implementation='circuit_stats' supports causal (decoder) attention only")

    modifiers = {"window": _layer_window(module, kwargs.get("sliding_window"), attention_mask),
                 "softcap": kwargs.get("softcap"), "sinks": kwargs.get("s_aux")}
    modifiers = {name: val for name, val in modifiers.items() if val is not None}
    for hf_name, name in MODIFIERS.items():
        if name in modifiers and name not in KERNEL_MODIFIERS:
            raise NotImplementedError(
                f"{type(module).__name__} passes {hf_name!r} (the model's real attention needs the kernel's "
                f"{name!r} argument), which this build of the circuit_stats kernel does not support yet; "
                "use attn_implementation='sdpa' (or 'eager') for this model")

    kpm, key_offset = _key_padding_mask(attention_mask, key)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if key_offset and recording.is_recording(module):
        # A sliding-window cache dropped the first key_offset keys (all outside every query's window):
        # put zeros back in their place so that the statistics see absolute key positions (sink, probes,
        # token matches). They get probability 0, as in eager attention.
        pad = key.new_zeros(key.shape[0], key.shape[1], key_offset, key.shape[3])
        key, value = torch.cat([pad, key], 2), torch.cat([pad, value], 2)
    elif key_offset:
        kpm = kpm[:, key_offset:]
    request = recording.request_for(module, query, key, kpm, window=modifiers.get("window"))

    if needs_grad or dropout > 0:
        out = _differentiable_attention(query, key, value, kpm, scaling, dropout, **modifiers)
        if request is not None:
            with torch.no_grad():
                _, stats = attention_with_stats(query, key, value, scale=scaling, backend=_BACKEND,
                                                **request.kernel_kwargs, **modifiers)
            request.deliver(stats)
    elif request is not None:  # the request carries the padding mask in its side inputs
        out, stats = attention_with_stats(query, key, value, scale=scaling, backend=_BACKEND, **request.kernel_kwargs,
                                          **modifiers)
        request.deliver(stats)
    else:  # no statistic is used: the output alone, no pass over statistics
        side = _padding_side_inputs(attention_mask, kpm, key_offset, key)
        out = attention_output(query, key, value, scale=scaling, backend=_BACKEND, side_inputs=side, **modifiers)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register the attention and mask functions under ``"circuit_stats"`` (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, circuit_stats_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, circuit_stats_mask)
