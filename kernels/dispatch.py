"""Public entry point: validation and backend choice (``attention_with_stats``)."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from typing import Optional, Sequence

import torch

from . import triton_decode, triton_key_mass
from .autotune import fused_fits
from .chunked import attention_lse_sink_sdpa, attention_with_stats_chunked
from .request import StatsRequest
from .side_inputs import SideInputs, check_offsets
from .stats import AttentionStats
from .triton_common import MAX_HEAD_DIM, device_smem_limit
from .triton_token_match import attention_with_stats_fused

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKENDS = ("auto", "torch", "triton")

# Arguments of attention_with_stats that the Triton kernel implements today, by argument name.
# Everything else in OPTIONAL_FEATURES runs on the torch backend: backend="auto" routes such a
# call there (with a warning, once per feature), backend="triton" raises NotImplementedError.
# Extend this set as the kernel learns a feature.
TRITON_SUPPORTED_FEATURES: frozenset[str] = frozenset(
    {"window", "softcap", "sinks", "distance", "local_window", "top1", "span", "key_mass"})
# "fp32 over shared memory": no fused tile fits the GPU's shared memory at this head dim with fp32
# inputs (head dim 256 on an A100: 163 KB per block).
OPTIONAL_FEATURES = ("window", "softcap", "sinks", "distance", "local_window", "top1", "span", "key_mass",
                     "head_dim>256", "fp32 over shared memory")
TRITON_MAX_HEAD_DIM = MAX_HEAD_DIM  # the kernels pad head dims on chip up to this size
_warned_features: set[str] = set()


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


def _check_positive_int(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 (or None), got {value!r}")


def _check_softcap(softcap) -> None:
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, numbers.Real)
                                or not math.isfinite(softcap) or softcap <= 0):
        raise ValueError(f"softcap must be a finite float > 0 (or None), got {softcap!r}")


def _check_sinks(sinks, q: torch.Tensor) -> None:
    if sinks is None:
        return
    if not isinstance(sinks, torch.Tensor) or not sinks.dtype.is_floating_point:
        raise TypeError(f"sinks must be a float tensor [{q.shape[1]}] (one logit per query head), "
                        f"got {type(sinks).__name__ if not isinstance(sinks, torch.Tensor) else sinks.dtype}")
    if tuple(sinks.shape) != (q.shape[1],):
        raise ValueError(f"sinks must have shape ({q.shape[1]},) (one logit per query head), got {tuple(sinks.shape)}")
    if sinks.device != q.device:
        raise ValueError(f"sinks are on {sinks.device}, q on {q.device}")


def check_bool(name: str, value) -> None:
    """Refuse anything but a real bool (``"false"`` or ``1`` would pass a truth test)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def fits_shared_memory(q: torch.Tensor) -> bool:
    """Whether some fused-kernel tile fits ``q``'s GPU's shared memory at its head dim and dtype
    (always, off CUDA: the interpreter has no such limit)."""
    if q.device.type != "cuda" or q.shape[-1] > TRITON_MAX_HEAD_DIM:
        return True
    return fused_fits(head_dim=q.shape[-1], elt_bytes=q.element_size(), smem_limit=device_smem_limit(q.device))


def resolve_backend(backend: str, device: torch.device, features: Sequence[str] = ()) -> str:
    """The backend that runs this call. ``features``: the names of the OPTIONAL_FEATURES it uses."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    missing = [f for f in features if f not in TRITON_SUPPORTED_FEATURES]
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if missing:
            new = [f for f in missing if f not in _warned_features]
            if new:
                _warned_features.update(new)
                warnings.warn(f"the Triton kernel does not implement {new} yet: backend='auto' runs these calls "
                              "on the torch backend (slower, O(chunk x N) memory)", stacklevel=3)
            return "torch"
        return "triton"
    if backend == "triton" and missing:
        raise NotImplementedError(f"backend='triton' does not implement {missing} yet; use backend='auto' or "
                                  "'torch' for them")
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
    distance: bool = False,
    local_window: Optional[int] = None,
    top1: bool = False,
    span: Optional[torch.Tensor] = None,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    key_mass: bool = False,
    key_mass_queries: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, AttentionStats]:
    """Causal attention that also returns per-row attention statistics, in one pass.

    Args:
        q: ``[B, Hq, Nq, D]`` queries; query ``i`` sits at key position ``Nk - Nq + i``.
        k, v: ``[B, Hkv, Nk, D]``; ``Hq`` must be a multiple of ``Hkv`` (GQA / MQA).
        scale: score scale, a finite float > 0; default ``D ** -0.5``.
        key_padding_mask: ``[B, Nk]`` bool, True where a key may be attended.
        offsets: fixed diagonal offsets ``o >= 0``; returns the probability on key ``i - o``.
        probe_keys: ``[B, P]`` absolute key positions (per batch row); returns every query's
            probability on each of them (0 where the query may not attend that key).
        token_ids: ``[B, Nk]`` token ids; when given, token-match induction and duplicate mass.
        entropy: also return each row's entropy (nats).
        distance: also return the expected attention distance ``sum_j p_ij (i - j)`` (tokens).
        local_window: ``W >= 1``: also return the mass on keys ``i - W < j <= i`` (``local``).
        top1: also return each row's most probable key (``top1_index``, absolute position,
            ties to the smallest; -1 for a row with no key) and its probability (``top1_prob``).
        span: ``[B, 2]`` int key ranges ``[start, end)``: also return the mass on them.
        window: sliding-window attention with transformers' semantics: query ``i`` attends key
            ``j`` iff ``i - window < j <= i`` (``window`` keys, itself included), int >= 1.
        softcap: attention-logit soft-capping (Gemma 2): the scaled score ``s`` becomes
            ``softcap * tanh(s / softcap)`` before masking and softmax; float > 0.
        sinks: ``[Hq]`` learned attention-sink logits (gpt-oss ``s_aux``): one extra logit per
            query head in every row's softmax denominator, with no value vector; the mass it
            takes is returned as ``learned_sink``.
        key_mass: also return ``key_mass [B, Hq, Nk]``, the attention each key receives from the
            call's queries, ``sum_i w[b, i] p_ij`` (a column sum of the probabilities; a second
            pass over the keys after the attention pass, O(Nk) memory).
        key_mass_queries: ``[B, Nq]`` float (finite, >= 0) or bool weight of each query row in
            ``key_mass`` (0 = the row does not count: a query mask, an observation window);
            None = every row weighs 1. Needs ``key_mass=True``.
        backend: ``"triton"``, ``"torch"`` (chunked, O(chunk x Nk) memory) or ``"auto"``
            (Triton for CUDA tensors, torch otherwise).
        side_inputs: ``key_padding_mask``, ``token_ids`` and ``probe_keys`` already built with
            ``SideInputs.build`` (once per forward, for callers that run many layers over the
            same keys); then those arguments (and ``span``, ``key_mass_queries``: the side
            inputs' ``query_weight``) must be None.

    Returns:
        ``(out [B, Hq, Nq, D] in q.dtype, AttentionStats)``; never the ``Nq x Nk`` matrix.

    Every statistic is defined on the model's real probabilities (capped scores, window,
    sinks); see ``AttentionStats``.
    """
    request, side_inputs, backend = _plan(
        q, k, v, scale=scale, key_padding_mask=key_padding_mask, offsets=offsets, probe_keys=probe_keys,
        token_ids=token_ids, entropy=entropy, backend=backend, side_inputs=side_inputs, distance=distance,
        local_window=local_window, top1=top1, span=span, window=window, softcap=softcap, sinks=sinks,
        key_mass=key_mass, key_mass_queries=key_mass_queries)
    return _run(q, k, v, request, side_inputs, backend, mark_nan_rows=True)


def attention_output(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    side_inputs: Optional[SideInputs] = None,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The attention output ``[B, Hq, Nq, D]`` alone, for callers that use no statistic (a model
    outside ``record()``): ``attention_with_stats`` with no statistics requested, less the pass
    that marks the statistics of NaN rows (the output itself is the same). Arguments as there;
    ``side_inputs`` may carry only the padding."""
    request, side_inputs, backend = _plan(q, k, v, scale=scale, key_padding_mask=key_padding_mask,
                                          side_inputs=side_inputs, window=window, softcap=softcap, sinks=sinks,
                                          backend=backend)
    extra = [name for name in ("token_ids", "probe_keys", "span", "query_weight")
             if getattr(side_inputs, name) is not None]
    if extra:
        raise ValueError(f"attention_output computes no statistic: its side_inputs must carry the padding only, "
                         f"got {extra}")
    return _run(q, k, v, request, side_inputs, backend, mark_nan_rows=False)[0]


def _plan(q, k, v, *, scale, key_padding_mask=None, offsets=(), probe_keys=None, token_ids=None, entropy=False,
          backend="auto", side_inputs=None, distance=False, local_window=None, top1=False, span=None, window=None,
          softcap=None, sinks=None, key_mass=False, key_mass_queries=None) -> tuple[StatsRequest, SideInputs, str]:
    """Validate ``attention_with_stats``'s arguments: ``(request, side inputs, backend)``."""
    _check_qkv(q, k, v)
    offsets = check_offsets(offsets)
    for name, flag in (("entropy", entropy), ("distance", distance), ("top1", top1), ("key_mass", key_mass)):
        check_bool(name, flag)
    _check_positive_int("local_window", local_window)
    _check_positive_int("window", window)
    _check_softcap(softcap)
    _check_sinks(sinks, q)
    if key_mass_queries is not None and not key_mass:
        raise ValueError("key_mass_queries weighs the query rows of key_mass: pass key_mass=True with it")
    B, _, _, D = q.shape
    Nk = k.shape[2]
    if scale is None:
        scale = D ** -0.5
    elif (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale)
          or scale <= 0):  # one rule for every backend (0 or less: NaN rows on torch, refused by Triton)
        raise ValueError(f"scale must be a finite real number > 0 (or None for head_dim ** -0.5), got {scale!r}")
    if side_inputs is None:
        side_inputs = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=key_padding_mask,
                                       token_ids=token_ids, probe_keys=probe_keys, span=span,
                                       query_weight=key_mass_queries)
    else:
        given = [n for n, t in (("key_padding_mask", key_padding_mask), ("token_ids", token_ids),
                                ("probe_keys", probe_keys), ("span", span),
                                ("key_mass_queries", key_mass_queries)) if t is not None]
        if given:
            raise ValueError(f"pass {given} inside side_inputs, not beside it")
    side_inputs.check_matches(q, k)
    request = StatsRequest(scale=float(scale), offsets=tuple(offsets), entropy=entropy, distance=distance,
                           local_window=local_window, top1=top1, window=window,
                           softcap=None if softcap is None else float(softcap), sinks=sinks, key_mass=key_mass)
    used = dict(request.uses(side_inputs), **{"head_dim>256": D > TRITON_MAX_HEAD_DIM,
                                              "fp32 over shared memory": not fits_shared_memory(q)})
    backend = resolve_backend(backend, q.device, [f for f in OPTIONAL_FEATURES if used[f]])
    return request, side_inputs, backend


def _run(q, k, v, request: StatsRequest, side_inputs: SideInputs, backend: str,
         mark_nan_rows: bool) -> tuple[torch.Tensor, AttentionStats]:
    """Run a planned call on ``backend``; ``mark_nan_rows``: mark the statistics of the Triton
    kernels' NaN rows (the torch backend always does)."""
    if backend == "triton":
        # Decode (Nq <= 16) over long keys: the split-key kernel; otherwise the fused one.
        split_len = triton_decode.decode_split_len(q, k)
        if split_len is None:
            out, stats = attention_with_stats_fused(q, k, v, request, side_inputs)
        else:
            out, stats = triton_decode.attention_with_stats_decode(q, k, v, request, side_inputs, split_len=split_len)
        if request.key_mass:  # a second pass over the keys, from the lse just written
            triton_key_mass.add_key_mass(q, k, request, side_inputs, stats)
        if not mark_nan_rows:
            return out, stats
        # The kernels write a NaN lse exactly on the rows whose output holds a NaN: mark the
        # other statistics from it ([B, Hq, Nq], no pass over the output, no synchronisation).
        return out, stats.mark_nan_rows(stats.lse.isnan(), side_inputs.query_weight)
    if request.is_plain(side_inputs) and q.shape[-1] <= TRITON_MAX_HEAD_DIM:  # output, lse, sink: SDPA on the CPU
        fast = attention_lse_sink_sdpa(q, k, v, scale=request.scale, side=side_inputs)
        if fast is not None:
            return fast
    return attention_with_stats_chunked(q, k, v, request, side_inputs)
