"""What the fused and the split-decode Triton kernels share: constants, limits, the shared-memory
model, launch helpers and the ``@triton.jit`` building blocks of their epilogues.

Imports go one way: ``dispatch -> {chunked, triton_attention, triton_decode} -> triton_common``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # host side: scale * log2(e) turns scores into log2 units
LN2 = tl.constexpr(0.6931471805599453)  # kernel side: log2 units back to nats
LOG2E_K = tl.constexpr(LOG2E)  # kernel side: nats to log2 units (learned sink logits)
# A finite "minus infinity" for running maxima, so that a tile in which a row has no attendable
# key yields alpha = exp2(0) = 1 instead of exp2(-inf + inf) = NaN.
NEG_BIG = tl.constexpr(-1.0e30)

# Keys per chunk when the epilogue re-scores a top-1 tile (``top1_in_tiles``).
TOP1_CHUNK = tl.constexpr(32)

MAX_HEAD_DIM = 256  # the kernels pad head dims on chip up to this size; dispatch routes larger ones to torch

# Shared memory per program, one model for both kernels: the Q tile plus ``num_stages`` buffers
# each of K and V, as triton allocates them (the compile report's measured figures match it, e.g.
# 160 KB for 128x128 w8 s2 at D = 128). The limit is the launch device's per-block opt-in maximum
# (CUDA's ``sharedMemPerBlockOptin``, which Triton checks a compile against: ``device_smem_limit``);
# ``SMEM_LIMIT_BYTES``, sm_90's (H100/H200: 227 KB = 232448 B), where there is no CUDA device (the
# interpreter, ahead-of-time compiles for sm_90). sm_80 (A100) allows 163 KB = 166912 B.
SMEM_LIMIT_BYTES = 227 * 1024


def device_smem_limit(device: Optional[torch.device]) -> int:
    """Shared memory one program may use on ``device``: its per-block opt-in maximum for a CUDA
    device (from Triton's driver, as Triton's own compile check), else ``SMEM_LIMIT_BYTES``."""
    if device is None or device.type != "cuda" or interpreting():
        return SMEM_LIMIT_BYTES
    index = device.index if device.index is not None else torch.cuda.current_device()
    return cuda_smem_limit(index)


@functools.lru_cache(maxsize=None)
def cuda_smem_limit(index: int) -> int:
    """``max_shared_mem`` of CUDA device ``index`` (bytes per block, opt-in)."""
    return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])


def interpreting() -> bool:
    """Whether kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, on the CPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Compile-time switches of the jit helpers (read when this module is imported, like Triton's own
# TRITON_INTERPRET): whether ``tl.math.fdiv`` takes ``approx`` (Triton >= 3.9; not 3.6), and
# whether the kernels run under the interpreter.
FDIV_HAS_APPROX = tl.constexpr("approx" in inspect.signature(tl.math.fdiv).parameters)
INTERPRETED = tl.constexpr(interpreting())


def head_block(head_dim: int) -> int:
    """On-chip head-dim tile: the next power of two, at least 16 (the smallest ``tl.dot`` K)."""
    return max(16, triton.next_power_of_2(head_dim))


# The fused kernel's TMA loads (``TMA_KV``) add their mbarriers: 24 to 1024 B in sm_90 compiles
# (Triton 3.9 and 3.6, with the alignment of the tiles after them).
TMA_BARRIER_BYTES = 1024


def smem_bytes(block_m: int, block_n: int, num_stages: int, block_d: int, elt_bytes: int) -> int:
    """Shared memory of one program: the Q tile (two copies for fp32 inputs) + ``num_stages`` K
    and V tiles + ``TMA_BARRIER_BYTES``. fp32's second Q tile is measured: sm_90 compiles of the
    64-row fp32 (3xTF32) tiles take exactly ``4 * (2 BLOCK_M + 2 BLOCK_N num_stages) * BLOCK_D``
    bytes with pointer loads, and up to 1 KB more with TMA loads, under Triton 3.9 and 3.6 (an H200
    refused 64x32 s2 at D = 256: 262144 B > 232448); 16-bit tiles take at most the one-copy figure
    (plus the barriers)."""
    q_tiles = 2 if elt_bytes >= 4 else 1
    return elt_bytes * (q_tiles * block_m * block_d + 2 * block_n * block_d * num_stages) + TMA_BARRIER_BYTES


def smem_fits(block_m: int, block_n: int, num_stages: int, block_d: int, elt_bytes: int,
              limit: int = SMEM_LIMIT_BYTES) -> bool:
    """Whether a tile fits ``limit`` bytes of shared memory (``device_smem_limit``)."""
    return smem_bytes(block_m, block_n, num_stages, block_d, elt_bytes) <= limit


def score_scales(scale: float, softcap: Optional[float]) -> tuple[float, float]:
    """``(qk_scale, cap_in)``: the loops compute ``tanh(qk * cap_in) * qk_scale``, i.e.
    ``softcap * tanh(s / softcap)`` in log2 units (``s = scale * qk``), or ``s`` in log2 units
    without a softcap (``cap_in`` then unused)."""
    qk_scale = (scale if softcap is None else softcap) * LOG2E
    cap_in = 1.0 if softcap is None else scale / softcap
    return qk_scale, cap_in


# Grid limits of a CUDA launch: 2^31 - 1 programs along x, 65535 along y and z.
MAX_GRID = (2**31 - 1, 65535, 65535)


def check_grid(grid: Sequence[int], kernel: str, axes: Sequence[str]) -> None:
    """Raise before a launch whose ``grid`` exceeds CUDA's limits (``MAX_GRID``); ``axes`` name
    what each grid axis counts, for the message."""
    for size, limit, what, axis in zip(grid, MAX_GRID, axes, "xyz"):
        if size > limit:
            raise ValueError(f"the {kernel} kernel's grid axis {axis} ({what}) is {size}, more than CUDA allows "
                             f"({limit}); split the call into smaller batches")


def index_tensor(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """``values`` as an int32 tensor on ``device``, made once per (device, values) and then reused
    (read-only), so that a launch (a decode step, a CUDA graph replay) makes no host-to-device
    copy for its offsets."""
    return _index_tensor(tuple(int(x) for x in values), torch.device(device))


@functools.lru_cache(maxsize=256)
def _index_tensor(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


class TorchTensors:
    """Allocates a launch's outputs (``empty``) and small index tensors (``values``, int32, cached
    per device) on a device; ``kernels.aot.SpecTensors`` is its shape-only counterpart."""

    def __init__(self, device: torch.device):
        self.device = device

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype, device=self.device)

    def values(self, values: Sequence[int]) -> torch.Tensor:
        return index_tensor(values, self.device)


def stride_args(t: Any, names: Sequence[str]) -> dict:
    """Launch arguments ``{name: stride}`` of ``t``'s dimensions; 0 each when ``t`` is None (absent)."""
    return dict(zip(names, t.stride() if t is not None else (0,) * len(names)))


# ``triton.heuristics`` rules: optional tensors are passed as None when absent, and the kernels'
# constexpr flags follow from them (as FLA's ``fla/ops/attn`` does).
HeuristicRule = Callable[[dict], Any]


def given(name: str) -> HeuristicRule:
    """Rule: whether the launch passes the optional tensor ``name``."""
    return lambda args: args[name] is not None


def extent(name: str, dim: int) -> HeuristicRule:
    """Rule: size ``dim`` of the optional tensor ``name``, 0 when it is absent."""
    return lambda args: 0 if args[name] is None else int(args[name].shape[dim])


# Set to "0" to load K and V through pointers in every launch (a switch for comparing the two load
# paths on a GPU, or for a GPU or driver whose TMA misbehaves); read at each launch.
TMA_SWITCH = "CIRCUIT_STATS_TMA"


def tma_ready(*names: str) -> HeuristicRule:
    """Rule: whether TMA (tensor descriptors over each ``[.., N, D]`` tensor ``names``' rows) can
    read them: unit stride along D, and a 16-byte aligned start and other strides (TMA's
    requirements; the row stride also nonzero), unless ``TMA_SWITCH`` is "0". Other layouts load
    through pointers."""
    def ready(t: Any) -> bool:
        elt, strides = t.element_size(), t.stride()
        return (strides[-1] == 1 and strides[-2] > 0 and t.data_ptr() % 16 == 0
                and all(s * elt % 16 == 0 for s in strides[:-1]))
    return lambda args: os.environ.get(TMA_SWITCH, "1") != "0" and all(ready(args[name]) for name in names)


def run_with_scratch(launch: Callable[[], Any], device: torch.device) -> Any:
    """Run ``launch()`` with a Triton allocator that hands out ``device`` memory: kernels that build
    tensor descriptors on the device (``tl.make_tensor_descriptor``) need global scratch. The
    allocator is set in a copy of the current context, so the caller's own (``triton.set_allocator``)
    is left as it was."""
    def allocate(size: int, alignment: int, stream: Optional[int]) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int8, device=device)

    def run() -> Any:
        triton.set_allocator(allocate)
        return launch()
    return contextvars.copy_context().run(run)


def derived_flags(rules: dict[str, HeuristicRule], args: dict) -> dict:
    """What ``triton.heuristics(rules)`` adds to a launch with arguments ``args`` (by name)."""
    return {flag: rule(args) for flag, rule in rules.items()}


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """The context every launch enters: ``torch.cuda.device(device)`` for a CUDA device, since
    Triton launches on the current CUDA device and stream (a layer on ``cuda:1`` under
    ``device_map="auto"`` must run there); nothing for other devices (the interpreter, which is
    checked to run with this NumPy: ``check_interpreter``)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    check_interpreter()
    return contextlib.nullcontext()


@functools.cache
def check_interpreter() -> None:
    """Fail clearly where Triton's interpreter cannot run our loops. Triton 3.6's interpreter
    turns a loop bound (a 1-element array) into an int with ``int(array)``, which NumPy >= 2.4
    refuses ("only 0-dimensional arrays can be converted to Python scalars"); Triton 3.9 squeezes
    the array first. With such a Triton, NumPy must be < 2.4."""
    try:
        int(np.ones(1))
        return  # this NumPy still converts 1-element arrays
    except TypeError:
        pass
    try:
        from triton.runtime import interpreter

        squeezes = "squeeze()" in inspect.getsource(interpreter._patch_lang_tensor)
    except (ImportError, AttributeError, OSError, TypeError):
        return  # another Triton layout: nothing known to check
    if not squeezes:
        raise RuntimeError(f"the Triton {triton.__version__} interpreter (TRITON_INTERPRET=1) cannot run these kernels "
                           f"with NumPy {np.__version__}: install numpy<2.4 (pip install 'numpy<2.4') or a newer "
                           "Triton (3.9 works)")


# ---------------------------------------------------------------------------------------------
# Shared @triton.jit helpers (inlined into the kernels)
# ---------------------------------------------------------------------------------------------


@triton.jit
def program_heads(Hq, GROUP):
    """``(bh, b, h, kvh)`` of this program, whose grid axis 1 runs over batch x query heads:
    ``bh`` (int64) = ``b * Hq + h``; ``kvh``: the kv head of query head ``h`` (GQA / MQA: ``GROUP``
    query heads share one kv head)."""
    bh = tl.program_id(1).to(tl.int64)
    h = bh % Hq
    return bh, bh // Hq, h, h // GROUP


@triton.jit
def approx_div(num, den):
    """``num / den`` as one approximate division (PTX ``div.approx.f32``: 2 ulp; a huge ``den``
    gives 0). Triton 3.9 spells it ``tl.math.fdiv(..., approx=True)``; Triton 3.6 has no
    ``approx`` argument, so there it is inline PTX (the same instruction); the interpreter, which
    runs no PTX, divides exactly."""
    if FDIV_HAS_APPROX:
        return tl.math.fdiv(num, den, approx=True)
    elif INTERPRETED:
        return num / den
    else:
        return tl.inline_asm_elementwise("div.approx.f32 $0, $1, $2;", "=r,r,r", [num, den],
                                         dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def tanh_softcap(x, cap_in, EXACT: tl.constexpr):
    """``tanh(x * cap_in)``. 16-bit inputs (``EXACT`` off): one PTX ``tanh.approx.f32`` (one
    MUFU.TANH; relative error at most 2^-11, the approximation FlashAttention 2 and 3 cap with,
    ``cutlass::fast_tanh``), about fp16's input rounding and below bf16's. fp32 inputs (``EXACT``)
    and the interpreter (no PTX): ``1 - 2 / (e^(2y) + 1)``, one ``exp2`` and one approximate
    division (``approx_div``; an overflowing ``e^(2y)`` gives exactly 1), absolute error a few
    1e-8. NaN stays NaN either way."""
    y = x * cap_in
    if EXACT or INTERPRETED:
        e = tl.math.exp2(2.8853900817779268 * y)
        return 1.0 - approx_div(tl.full(x.shape, 2.0, tl.float32), e + 1.0)
    else:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [y], dtype=tl.float32, is_pure=True,
                                         pack=1)


@triton.jit
def join_learned_sink(lse2, m, has_key, sink2):
    """Add a learned sink logit ``sink2`` (log2 units) to each row's key log-sum-exp ``lse2``
    (``m``: the row max the key sums are relative to). Returns ``(lse2 with the sink, norm)``,
    ``norm = 2^(m - lse2)`` turning a key sum of ``2^(s2 - m)`` into probabilities (0 on rows
    with no attendable key). Shared by the fused epilogue and the split-decode combine."""
    keys2 = tl.where(has_key, lse2, float("-inf"))
    top2 = tl.maximum(keys2, sink2)
    lse2 = top2 + tl.math.log2(tl.math.exp2(keys2 - top2) + tl.math.exp2(sink2 - top2))
    return lse2, tl.where(has_key, tl.math.exp2(m - lse2), 0.0)


@triton.jit
def row_entropy2(e, l, m, lse2, norm, sink2, HAS_SINKS: tl.constexpr):
    """Row entropy in bits from ``e = sum_j 2^(s2_j - m) (s2_j - m)`` and ``l = sum_j 2^(s2_j - m)``:
    ``log2 l - e / l``; with a learned sink, ``-sum p log2 p`` over the keys
    (``p_j = 2^(s2_j - m) norm``) and the sink. 0 on rows with no attendable key."""
    if HAS_SINKS:
        p_sink = tl.math.exp2(sink2 - lse2)
        ent2 = -norm * (e + l * (m - lse2)) - p_sink * (sink2 - lse2)
    else:
        l_safe = tl.where(l > 0, l, 1.0)
        ent2 = tl.where(l > 0, tl.math.log2(l_safe) - e / l_safe, 0.0)
    return ent2


@triton.jit
def point_prob(q, Kb, key, ok, q_pos, window, KPMb, stride_mn, stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in,
               ref2, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """``2^(s2(q . k_key) - ref2)`` for one key per row (``s2`` the capped score in log2 units),
    0 where the key may not be attended: ``ok`` is off, the key is left of the row's sliding
    window or padded. ``ref2`` is the row's log-sum-exp (fused epilogue: a probability) or the
    split's running max (split decode: a partial). ``q``: ``[BLOCK_M, BLOCK_D]`` queries."""
    if HAS_WINDOW:
        ok = ok & (key > q_pos - window)
    if HAS_PAD:
        ok = ok & (tl.load(KPMb + key.to(tl.int64) * stride_mn, mask=ok, other=0) != 0)
    kk = tl.load(Kb + key[:, None].to(tl.int64) * stride_kn + offs_d[None, :] * stride_kd,
                 mask=ok[:, None] & d_ok[None, :], other=0.0)
    s = tl.sum(q.to(tl.float32) * kk.to(tl.float32), 1)
    if HAS_SOFTCAP:
        s = tanh_softcap(s, cap_in, q.dtype == tl.float32)
    return tl.math.exp2(tl.where(ok, s * qk_scale - ref2, float("-inf")))


@triton.jit
def store_lse(LSE_ROWS, lse2, has_key, out, d_ok, row_ok, HAS_SINKS: tl.constexpr):
    """Store the rows' log-sum-exp in nats: -inf on a row with no attendable key (without a learned
    sink), NaN on a row whose output ``out`` (``[rows, BLOCK_D]``, columns ``d_ok``) holds a NaN.
    The dispatcher marks every statistic of the NaN rows from it (``AttentionStats.mark_nan_rows``),
    with no pass over the output."""
    lse = lse2 * LN2
    if not HAS_SINKS:
        lse = tl.where(has_key, lse, float("-inf"))
    out_nan = tl.sum(((out != out) & d_ok[None, :]).to(tl.int32), 1) > 0
    tl.store(LSE_ROWS, tl.where(out_nan, float("nan"), lse), mask=row_ok)


@triton.jit
def initial_loop_state(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The key loops' running state before the first key, in their order: ``acc``
    (``[BLOCK_M, BLOCK_D]`` output sum), ``l_i`` (row sum), ``m_i`` (row max, ``NEG_BIG``), the
    statistics' sums (induction, duplicate, entropy, distance, local, span) and ``top_idx`` (-1)."""
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    top_idx = tl.full([BLOCK_M], -1, dtype=tl.int32)
    return acc, zero, m_i, zero, zero, zero, zero, zero, zero, top_idx


@triton.jit
def side_input_rows(TOK, TOKP, KPM, SPAN, FIRST, b, Nk, stride_mb, q_pos, row_ok, BLOCK_M: tl.constexpr,
                    HAS_TOK: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SPAN: tl.constexpr):
    """Batch row ``b``'s side inputs: ``(TOKb, TOKPb, KPMb, q_tok, span_lo, span_hi)``, the row
    bases of the token ids, previous token ids and padding mask, the queries' tokens
    (``[BLOCK_M]``, -2 outside ``row_ok``; zeros without tokens) and the span (0, 0 without).
    An absent tensor (None) gets ``FIRST``'s row as its base, never read (a jit function cannot
    return None)."""
    TOKb = FIRST + b
    TOKPb = FIRST + b
    KPMb = FIRST + b
    q_tok = tl.zeros([BLOCK_M], dtype=tl.int32)
    if HAS_TOK:
        TOKb = TOK + b * Nk
        TOKPb = TOKP + b * Nk
        q_tok = tl.load(TOKb + q_pos, mask=row_ok, other=-2)
    if HAS_PAD:
        KPMb = KPM + b * stride_mb
    span_lo = 0
    span_hi = 0
    if HAS_SPAN:
        span_lo = tl.load(SPAN + 2 * b)
        span_hi = tl.load(SPAN + 2 * b + 1)
    return TOKb, TOKPb, KPMb, q_tok, span_lo, span_hi


@triton.jit
def _store_point_prob(OUT, out_row, row_ok, KEYS, b, t, q, Kb, ok, k_lo, k_hi, q_pos, window, KPMb, stride_mn,
                      stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in, ref2, N: tl.constexpr, PROBES: tl.constexpr,
                      SPLIT: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
                      HAS_SOFTCAP: tl.constexpr):
    if PROBES:  # an absolute key per batch row
        key = tl.zeros_like(q_pos) + tl.load(KEYS + b * N + t)
    else:  # a fixed offset back from each query
        key = q_pos - tl.load(KEYS + t)
    if PROBES:  # (an offset key is at or before its query, a probe key at or after key 0)
        ok = ok & (key <= q_pos)
    else:
        ok = ok & (key >= 0)
    if SPLIT:
        ok = ok & (key >= k_lo) & (key < k_hi)
    tl.store(OUT + out_row + t, point_prob(q, Kb, key, ok, q_pos, window, KPMb, stride_mn, stride_kn, stride_kd,
                                           offs_d, d_ok, qk_scale, cap_in, ref2, HAS_WINDOW, HAS_PAD, HAS_SOFTCAP),
             mask=row_ok)


@triton.jit
def store_point_probs(OUT, out_row, row_ok, KEYS, b, q, Kb, ok, k_lo, k_hi, q_pos, window, KPMb, stride_mn, stride_kn,
                      stride_kd, offs_d, d_ok, qk_scale, cap_in, ref2, N: tl.constexpr, PROBES: tl.constexpr,
                      SPLIT: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
                      HAS_SOFTCAP: tl.constexpr):
    """The offset (``PROBES`` off: keys ``q_pos - KEYS[t]``) or probe (keys ``KEYS[b, t]``) point
    statistics of the epilogues: ``point_prob`` for each of the ``N`` keys, stored at
    ``OUT + out_row + t`` (``out_row``: each row's first column) for ``row_ok`` rows, 0 unless ``ok``
    (within ``row_ok``) and the key can be attended. ``SPLIT``: the split-decode epilogue (only keys
    in the split ``[k_lo, k_hi)``; a loop with one key row live at a time), else the fused one
    (unrolled; ``k_lo``, ``k_hi`` unused)."""
    if not SPLIT:
        for t in tl.static_range(N):
            _store_point_prob(OUT, out_row, row_ok, KEYS, b, t, q, Kb, ok, k_lo, k_hi, q_pos, window, KPMb, stride_mn,
                              stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in, ref2, N, PROBES, SPLIT,
                              HAS_WINDOW, HAS_PAD, HAS_SOFTCAP)
    else:
        for t in range(N):
            _store_point_prob(OUT, out_row, row_ok, KEYS, b, t, q, Kb, ok, k_lo, k_hi, q_pos, window, KPMb, stride_mn,
                              stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in, ref2, N, PROBES, SPLIT,
                              HAS_WINDOW, HAS_PAD, HAS_SOFTCAP)


@triton.jit
def range_stat_segments(lo, hi, first_q, local_window, span_lo, span_hi, HAS_LOCAL: tl.constexpr,
                        HAS_SPAN: tl.constexpr, BLOCK_N: tl.constexpr):
    """Cut the unmasked key tiles ``[lo, hi)`` (tile-aligned) at ``cut1 <= cut2 <= cut3`` so that
    ``[cut1, cut2)`` and ``[cut3, hi)`` hold every tile that reaches some row's last
    ``local_window`` keys (a suffix: rows sit at ``first_q`` and after) or overlaps the span
    ``[span_lo, span_hi)``, and ``[lo, cut1)``, ``[cut2, cut3)`` none: the loops run the local
    and span code on the former only. Without local and span all three are ``hi``."""
    local_start = hi  # first tile that reaches a row's local window
    if HAS_LOCAL:
        local_start = (tl.maximum(first_q - local_window + 1, 0) // BLOCK_N) * BLOCK_N
    span_start = hi
    span_end = hi
    if HAS_SPAN:
        span_start = (span_lo // BLOCK_N) * BLOCK_N
        span_end = tl.where(span_hi > span_lo, tl.cdiv(span_hi, BLOCK_N) * BLOCK_N, span_start)
    cut1 = tl.minimum(tl.maximum(tl.minimum(span_start, local_start), lo), hi)
    cut2 = tl.minimum(tl.maximum(span_end, cut1), hi)
    cut3 = tl.minimum(tl.maximum(local_start, cut2), hi)
    return cut1, cut2, cut3


@triton.jit
def top1_in_tiles(q, top_tile, pending, q_pos, Kb, KPMb, Nk, window, cap_in, stride_kn, stride_kd, stride_mn,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """Top-1 key of each ``pending`` row, -1 elsewhere: the first key of the row's tile
    ``top_tile`` (the key loops keep only the tile that raised the running max) holding the
    tile's highest score, found by re-scoring each distinct winning tile once with the loop's
    ``q [BLOCK_M, BLOCK_D]`` (so that the scores are the loop's), in chunks of at most
    ``TOP1_CHUNK`` keys (a whole 128-key tile held more registers than the key loop).
    Data-dependent cost: one ``q k^T`` tile per distinct winning tile among the rows."""
    CHUNK: tl.constexpr = TOP1_CHUNK if BLOCK_N > TOP1_CHUNK else BLOCK_N
    offs_j = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    top_idx = tl.zeros_like(top_tile) - 1
    while tl.max(pending.to(tl.int32), 0) > 0:
        t = tl.min(tl.where(pending, top_tile, Nk), 0)
        best = tl.zeros_like(top_tile) - 1
        best_s = tl.full(top_tile.shape, float("-inf"), tl.float32)
        for start in range(t, t + BLOCK_N, CHUNK):
            offs_n = start + offs_j
            in_range = offs_n < Nk
            k = tl.load(Kb + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None] * stride_kd,
                        mask=d_ok[:, None] & in_range[None, :], other=0.0)
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)
            if HAS_SOFTCAP:
                qk = tanh_softcap(qk, cap_in, q.dtype == tl.float32)
            keep = (offs_n[None, :] <= q_pos[:, None]) & in_range[None, :]
            if HAS_WINDOW:
                keep = keep & (offs_n[None, :] > q_pos[:, None] - window)
            if HAS_PAD:
                keep = keep & (tl.load(KPMb + offs_n.to(tl.int64) * stride_mn, mask=in_range, other=0) != 0)[None, :]
            qk = tl.where(keep, qk, float("-inf"))
            chunk_max = tl.max(qk, 1)
            better = chunk_max > best_s  # strictly: ties keep the earlier chunk, argmax the first key
            best = tl.where(better, start + tl.argmax(qk, 1), best)
            best_s = tl.maximum(best_s, chunk_max)
        mine = pending & (top_tile == t)
        top_idx = tl.where(mine, best, top_idx)
        pending = pending & (top_tile != t)
    return top_idx


def constexpr_names(kernel: Any) -> tuple[str, ...]:
    """The ``tl.constexpr`` parameters of a ``@triton.jit`` kernel (compiled or interpreted), in
    order."""
    return _constexpr_names(getattr(kernel, "fn", kernel))


@functools.cache
def _constexpr_names(fn: Any) -> tuple[str, ...]:  # a signature per launch costs tens of microseconds
    return tuple(name for name, p in inspect.signature(fn).parameters.items()
                 if "constexpr" in str(p.annotation))


def kernel_flags(kernel: Any, flags: dict) -> dict:
    """The entries of ``flags`` (``StatsRequest.flags``) that ``kernel`` declares as constexprs."""
    names = constexpr_names(kernel)
    return {name: value for name, value in flags.items() if name in names}
