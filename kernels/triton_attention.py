"""Fused causal flash-attention forward that also returns per-row attention statistics.

The structure follows the Triton fused-attention tutorial: one program owns BLOCK_M query
rows of one (batch, head), keeps the row max ``m_i``, row sum ``l_i`` and output accumulator
on chip, and walks the key tiles left to right (``_attn_fwd_inner``). Scores are kept in
base-2 units (``s2 = s * log2(e)``) so that every exponential is an ``exp2``.

What each statistic costs in the hot loop (the unmasked key tiles):

* ``lse``, sink, fixed offsets and probes: nothing. ``lse`` falls out of ``m_i`` and ``l_i``;
  a point probability is recomputed in the epilogue from one gathered key row and the row's
  log-sum-exp, ``p_ij = exp2(s2_ij - lse2_i)`` (Q is reloaded there, so it is not kept live
  through the loop).
* entropy: one multiply-add per score, ``sum_j p_j * (s2_j - m)``, reusing the exponent
  argument that ``exp2`` needs anyway, rescaled by the same ``alpha`` as ``l_i``.
* token-match induction / duplicate mass: one integer compare and one select-add per score
  each (the unmasked tiles hold only keys strictly before every query of the block, so no
  position test is needed there).
* distance: one multiply-add per score, ``sum_j p_j (q0 - j)`` with ``q0`` the block's first
  query; ``i - q0`` times the row sum is added in the epilogue.
* top1: a per-tile ``argmax`` kept where the tile max beats the running max; its probability is
  ``2^(m_i - lse2)`` from the running max itself.
* local and span: a masked sum, only on tiles that reach some row's last ``local_window`` keys or
  overlap the span (one scalar branch per tile elsewhere).
* softcap: one ``exp2`` and one approximate reciprocal per score, before masking.
* sliding window: no per-score work in the unmasked tiles; tiles that cross the left edge of some
  row's window run a masked stage of their own, tiles left of every row's window are skipped.
* learned sinks: epilogue only (one more outcome in the log-sum-exp).

Any head dim from 1 to 256 runs: the tile is padded on chip to ``BLOCK_D`` (the next power of
two, at least 16) with masked loads, so padding costs no HBM traffic. fp32 inputs run on the
tensor cores as 3xTF32 (``input_precision="tf32x3"``), which keeps fp32-level accuracy.

Statistics that were not requested are compiled out (``tl.constexpr`` flags).
``launch_arguments`` builds a launch's argument list from tensors or from shape-only stand-ins
(``kernels.aot``), so the ahead-of-time compile test compiles exactly what the launcher runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import triton
import triton.language as tl

from .autotune import fused_tuner, length_buckets, tuner_bucket
from .pinning import fused_pin
from .request import StatsRequest
from .side_inputs import SideInputs
from .stats import AttentionStats
from .triton_common import (LN2, LOG2E_K, MAX_HEAD_DIM, NEG_BIG, device_guard, head_block, interpreting,
                            join_learned_sink, point_prob, row_entropy2, score_scales, tanh_softcap)


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_idx,
    q, q_pos, q_tok, q0,
    K, V, TOK, TOKP, KPM,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
    lo, hi, Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi,
    MASKED: tl.constexpr, HAS_PAD: tl.constexpr, HAS_TOK: tl.constexpr,
    HAS_ENT: tl.constexpr, FP32_INPUT: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_DIST: tl.constexpr,
    HAS_LOCAL: tl.constexpr, HAS_TOP1: tl.constexpr, HAS_SPAN: tl.constexpr,
):
    """Online-softmax sweep over key tiles [lo, hi).

    With MASKED=False every key of every tile is strictly before every query of the block,
    inside [0, Nk) and inside every row's sliding window, so no causal, range or window mask is
    built (the bulk of the work). ``q0`` is the block's first query position."""
    offs_j = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    # In-tile offsets in int32, computed once; only the tile's base pointer moves (64-bit).
    k_off = offs_j[None, :] * stride_kn + offs_d[:, None] * stride_kd  # [BLOCK_D, BLOCK_N]
    v_off = offs_j[:, None] * stride_vn + offs_d[None, :] * stride_vd  # [BLOCK_N, BLOCK_D]
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_j
        in_range = offs_n < Nk
        k_ptrs = K + start_n.to(tl.int64) * stride_kn + k_off
        v_ptrs = V + start_n.to(tl.int64) * stride_vn + v_off
        # Padded head dims (BLOCK_D > HEAD_DIM) are masked: zeros on chip, no HBM traffic.
        if MASKED:  # the ragged end of the keys lives in this stage only
            if BLOCK_D != HEAD_DIM:
                k = tl.load(k_ptrs, mask=d_ok[:, None] & in_range[None, :], other=0.0)
            else:
                k = tl.load(k_ptrs, mask=in_range[None, :], other=0.0)
        else:
            if BLOCK_D != HEAD_DIM:
                k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
            else:
                k = tl.load(k_ptrs)
        if FP32_INPUT:
            qk = tl.dot(q, k, input_precision="tf32x3")
        else:
            qk = tl.dot(q, k)
        if HAS_SOFTCAP:  # capped before masking: tanh(-inf) would un-mask a key
            qk = tanh_softcap(qk, cap_in)

        if MASKED:
            keep = (offs_n[None, :] <= q_pos[:, None]) & in_range[None, :]
            if HAS_WINDOW:  # transformers' sliding window: i - window < j <= i
                keep = keep & (offs_n[None, :] > q_pos[:, None] - window)
            if HAS_PAD:
                kpm = tl.load(KPM + offs_n * stride_mn, mask=in_range, other=0)
                keep = keep & (kpm[None, :] != 0)
            qk = tl.where(keep, qk, float("-inf"))
        elif HAS_PAD:
            kpm = tl.load(KPM + offs_n * stride_mn)
            qk = tl.where(kpm[None, :] != 0, qk, float("-inf"))

        # As the tutorial: scale the row max, not the tile (qk_scale > 0), and fold the scale
        # into the exponent's multiply-add. d2 = s2 - m, with s2 the score in log2 units.
        tile_max = tl.max(qk, 1) * qk_scale
        if HAS_TOP1:  # strictly greater: ties keep the earlier (smaller) key position
            top_idx = tl.where(tile_max > m_i, start_n + tl.argmax(qk, 1), top_idx)
        m_new = tl.maximum(m_i, tile_max)
        alpha = tl.math.exp2(m_i - m_new)
        d2 = qk * qk_scale - m_new[:, None]
        p = tl.math.exp2(d2)  # 0 on masked keys

        if HAS_ENT:
            # ent_acc = sum_j p_j * (s2_j - m): re-centre the old sum on the new max, then add.
            ent_acc = alpha * (ent_acc + l_i * (m_i - m_new))
            if MASKED or HAS_PAD:  # masked keys have d2 = -inf and p = 0
                ent_acc += tl.sum(tl.where(p > 0, p * d2, 0.0), 1)
            else:
                ent_acc += tl.sum(p * d2, 1)
        if HAS_TOK:
            if MASKED:
                k_tok = tl.load(TOK + offs_n, mask=in_range, other=-1)
                k_prev = tl.load(TOKP + offs_n, mask=in_range, other=-1)
                is_dup = (k_tok[None, :] == q_tok[:, None]) & (offs_n[None, :] < q_pos[:, None])
            else:
                k_tok = tl.load(TOK + offs_n)
                k_prev = tl.load(TOKP + offs_n)
                is_dup = k_tok[None, :] == q_tok[:, None]  # j < i holds for the whole tile
            # duplicate: same token strictly before the query; induction: the key's
            # predecessor holds the query token (j-1 < i follows from causality, j <= i).
            is_ind = k_prev[None, :] == q_tok[:, None]
            dup_acc = dup_acc * alpha + tl.sum(tl.where(is_dup, p, 0.0), 1)
            ind_acc = ind_acc * alpha + tl.sum(tl.where(is_ind, p, 0.0), 1)
        if HAS_DIST:  # sum_j p_j (q0 - j): one FMA per score; the row's i - q0 is added at the end
            dist_acc = dist_acc * alpha + tl.sum(p * (q0 - offs_n).to(tl.float32)[None, :], 1)
        if HAS_LOCAL:  # only tiles that reach into some row's last local_window keys do work
            loc_acc = loc_acc * alpha
            if start_n + BLOCK_N > q0 - local_window + 1:
                in_local = offs_n[None, :] > q_pos[:, None] - local_window
                loc_acc += tl.sum(tl.where(in_local, p, 0.0), 1)
        if HAS_SPAN:  # only tiles that overlap [span_lo, span_hi) do work
            span_acc = span_acc * alpha
            if (start_n < span_hi) & (start_n + BLOCK_N > span_lo):
                in_span = (offs_n >= span_lo) & (offs_n < span_hi)
                span_acc += tl.sum(tl.where(in_span[None, :], p, 0.0), 1)

        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            if BLOCK_D != HEAD_DIM:
                v = tl.load(v_ptrs, mask=in_range[:, None] & d_ok[None, :], other=0.0)
            else:
                v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)
        else:
            if BLOCK_D != HEAD_DIM:
                v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
            else:
                v = tl.load(v_ptrs)
        acc = acc * alpha[:, None]
        if FP32_INPUT:
            acc = tl.dot(p, v, acc, input_precision="tf32x3")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_idx


@triton.jit
def _attn_stats_fwd(
    Q, K, V, Out, LSE, SINK, OFFS, PRB, IND, DUP, ENT, DIST, LOC, TOP_I, TOP_P, SPANM, LEARNED,
    TOK, TOKP, KPM, FIRST, OFFSET_VALUES, PROBE_KEYS, SPAN, SINK_LOGITS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mn,
    Hq, GROUP, Nq, Nk, qk_scale, cap_in, window, local_window,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, N_OFFSETS: tl.constexpr, N_PROBES: tl.constexpr,
    HAS_PAD: tl.constexpr, HAS_TOK: tl.constexpr, HAS_ENT: tl.constexpr, FP32_INPUT: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_DIST: tl.constexpr, HAS_LOCAL: tl.constexpr, HAS_TOP1: tl.constexpr, HAS_SPAN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    h = bh % Hq
    kvh = h // GROUP  # GQA / MQA: GROUP query heads share one kv head

    Qb = Q + b * stride_qb + h * stride_qh
    Kb = K + b * stride_kb + kvh * stride_kh
    Vb = V + b * stride_vb + kvh * stride_vh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < Nq
    # Bottom-right causal alignment: query row i sits at absolute key position Nk - Nq + i.
    q_pos = (Nk - Nq) + offs_m
    q_ptrs = Qb + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    ind_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    dup_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    ent_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    dist_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    loc_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    span_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    top_idx = tl.full([BLOCK_M], -1, dtype=tl.int32)

    TOKb = TOK + b * Nk
    TOKPb = TOKP + b * Nk
    KPMb = KPM + b * stride_mb
    q_tok = tl.zeros([BLOCK_M], dtype=tl.int32)
    if HAS_TOK:
        q_tok = tl.load(TOKb + q_pos, mask=row_ok, other=-2)
    span_lo = 0
    span_hi = 0
    if HAS_SPAN:
        span_lo = tl.load(SPAN + 2 * b)
        span_hi = tl.load(SPAN + 2 * b + 1)

    # Keys before the first unpadded key (left padding) are never attended: skip their tiles;
    # so are keys left of every row's sliding window.
    first = tl.load(FIRST + b)
    q0 = Nk - Nq + start_m * BLOCK_M  # the block's first query position
    lo = 0
    if HAS_PAD:
        lo = (first // BLOCK_N) * BLOCK_N
    if HAS_WINDOW:
        lo = tl.maximum(lo, (tl.maximum(q0 - window + 1, 0) // BLOCK_N) * BLOCK_N)
    # Stage 1: tiles entirely before the block's first query position (so strictly before
    # every query of the block) need no mask. Stage 2: the tiles at the diagonal and the
    # ragged end of the keys. With a window, stage 0: the tiles that cross the left edge of some
    # row's window (keys before q0 + BLOCK_M - window), masked.
    mid = tl.maximum((q0 // BLOCK_N) * BLOCK_N, lo)
    hi = tl.minimum(q0 + BLOCK_M, Nk)

    if HAS_WINDOW:
        edge = tl.cdiv(tl.maximum(q0 + BLOCK_M - window, 0), BLOCK_N) * BLOCK_N
        edge = tl.minimum(tl.maximum(edge, lo), mid)
        acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_idx = _attn_fwd_inner(
            acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_idx, q, q_pos, q_tok, q0,
            Kb, Vb, TOKb, TOKPb, KPMb, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            lo, edge, Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi,
            True, HAS_PAD, HAS_TOK, HAS_ENT, FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_N,
            HAS_WINDOW, HAS_SOFTCAP, HAS_DIST, HAS_LOCAL, HAS_TOP1, HAS_SPAN)
        lo = edge
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_idx = _attn_fwd_inner(
        acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_idx, q, q_pos, q_tok, q0,
        Kb, Vb, TOKb, TOKPb, KPMb, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
        lo, mid, Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi,
        False, HAS_PAD, HAS_TOK, HAS_ENT, FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_N,
        HAS_WINDOW, HAS_SOFTCAP, HAS_DIST, HAS_LOCAL, HAS_TOP1, HAS_SPAN)
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_idx = _attn_fwd_inner(
        acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_idx, q, q_pos, q_tok, q0,
        Kb, Vb, TOKb, TOKPb, KPMb, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
        mid, hi, Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi,
        True, HAS_PAD, HAS_TOK, HAS_ENT, FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_N,
        HAS_WINDOW, HAS_SOFTCAP, HAS_DIST, HAS_LOCAL, HAS_TOP1, HAS_SPAN)

    # Epilogue. A row with no attendable key has l_i == 0: output 0, stats 0, lse -inf (with a
    # learned sink: lse = the sink logit, learned_sink 1). ``norm`` turns a sum of the loop's
    # 2^(s2 - m_i) into probabilities: 1 / l_i, or 2^(m_i - lse2) when the sink shares the mass.
    has_key = l_i > 0
    l_safe = tl.where(has_key, l_i, 1.0)
    lse2 = m_i + tl.math.log2(l_safe)
    sink2 = 0.0
    if HAS_SINKS:
        sink2 = tl.load(SINK_LOGITS + h).to(tl.float32) * LOG2E_K
        lse2, norm = join_learned_sink(lse2, m_i, has_key, sink2)
    else:
        norm = 1.0 / l_safe
    out = acc * norm[:, None]
    Ob = Out + b * stride_ob + h * stride_oh
    tl.store(Ob + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])

    row = bh * Nq + offs_m  # flat index into the contiguous [B, Hq, Nq] statistics
    if HAS_SINKS:
        tl.store(LSE + row, lse2 * LN2, mask=row_ok)
    else:
        tl.store(LSE + row, tl.where(has_key, lse2 * LN2, float("-inf")), mask=row_ok)

    # Point probabilities: reload Q (in fp32) rather than keep it live through the loop. A key
    # left of a row's sliding window has probability 0.
    q32 = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    first_vec = tl.zeros([BLOCK_M], dtype=tl.int32) + first
    sink_ok = has_key & (first_vec <= q_pos)
    if HAS_WINDOW:
        sink_ok = sink_ok & (first_vec > q_pos - window)
    tl.store(SINK + row, point_prob(q32, Kb, first_vec, sink_ok & row_ok, q_pos, window, KPMb, stride_mn, stride_kn,
                                    stride_kd, offs_d, d_ok, qk_scale, cap_in, lse2, False, False, HAS_SOFTCAP),
             mask=row_ok)
    for t in tl.static_range(N_OFFSETS):
        key = q_pos - tl.load(OFFSET_VALUES + t)
        tl.store(OFFS + row * N_OFFSETS + t,
                 point_prob(q32, Kb, key, has_key & row_ok & (key >= 0), q_pos, window, KPMb, stride_mn, stride_kn,
                            stride_kd, offs_d, d_ok, qk_scale, cap_in, lse2, HAS_WINDOW, HAS_PAD, HAS_SOFTCAP),
                 mask=row_ok)
    for t in tl.static_range(N_PROBES):
        key = tl.zeros([BLOCK_M], dtype=tl.int32) + tl.load(PROBE_KEYS + b * N_PROBES + t)
        tl.store(PRB + row * N_PROBES + t,
                 point_prob(q32, Kb, key, has_key & row_ok & (key <= q_pos), q_pos, window, KPMb, stride_mn, stride_kn,
                            stride_kd, offs_d, d_ok, qk_scale, cap_in, lse2, HAS_WINDOW, HAS_PAD, HAS_SOFTCAP),
                 mask=row_ok)

    if HAS_TOK:
        tl.store(IND + row, ind_acc * norm, mask=row_ok)
        tl.store(DUP + row, dup_acc * norm, mask=row_ok)
    if HAS_ENT:
        tl.store(ENT + row, row_entropy2(ent_acc, l_i, m_i, lse2, norm, sink2, HAS_SINKS) * LN2, mask=row_ok)
    if HAS_DIST:
        tl.store(DIST + row, norm * (dist_acc + (q_pos - q0).to(tl.float32) * l_i), mask=row_ok)
    if HAS_LOCAL:
        tl.store(LOC + row, loc_acc * norm, mask=row_ok)
    if HAS_SPAN:
        tl.store(SPANM + row, span_acc * norm, mask=row_ok)
    if HAS_TOP1:
        tl.store(TOP_I + row, tl.where(has_key, top_idx, -1).to(tl.int64), mask=row_ok)
        tl.store(TOP_P + row, tl.where(has_key, tl.math.exp2(m_i - lse2), 0.0), mask=row_ok)
    if HAS_SINKS:
        tl.store(LEARNED + row, tl.math.exp2(sink2 - lse2), mask=row_ok)


# ----------------------------------------------------------------------------------------------
# The autotuned kernel (which tiles a launch may try, and which one it runs: ``autotune``).

# The fused kernel itself, for ahead-of-time compilation (kernels.aot).
FUSED_KERNEL = _attn_stats_fwd
FUSED_TUNER = fused_tuner(_attn_stats_fwd)

# Fixed small tiles under TRITON_INTERPRET=1: programs run serially on the CPU there.
INTERPRET_BLOCK = 16


# ----------------------------------------------------------------------------------------------
# Launch arguments, shared by the launcher and the ahead-of-time compile (kernels.aot).

class TorchTensors:
    """Allocates a launch's outputs and small constant tensors on a device."""

    def __init__(self, device: torch.device):
        self.device = device

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype, device=self.device)

    def values(self, values: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(list(values), dtype=dtype, device=self.device)


@dataclass(frozen=True)
class KernelLaunch:
    """Everything one launch of ``_attn_stats_fwd`` needs except the tile config.

    ``args``: positional kernel arguments; ``constexprs``: the feature flags (compile-time);
    ``grid_rows``: ``(Nq, B * Hq)``, the grid is ``(cdiv(Nq, BLOCK_M), B * Hq)``;
    ``bucket``: autotune bucket (``tuner_bucket``); ``out``/``stats``: the output tensors."""

    args: tuple
    constexprs: dict
    grid_rows: tuple[int, int]
    bucket: str
    out: Any
    stats: AttentionStats


def launch_arguments(q: Any, k: Any, v: Any, request: StatsRequest, side: SideInputs,
                     tensors: Optional[Any] = None) -> KernelLaunch:
    """Allocate the outputs and build the argument list of one launch.

    ``q [B, Hq, Nq, D]``, ``k``/``v [B, Hkv, Nk, D]`` are tensors, or shape-only stand-ins
    (``kernels.aot.TensorSpec``) together with ``tensors=kernels.aot.SpecTensors()``; by default
    outputs are allocated with ``TorchTensors(q.device)``. Inputs are assumed validated
    (``dispatch.attention_with_stats``)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    tensors = tensors or TorchTensors(q.device)
    flags = request.flags(side)
    out = tensors.empty((B, Hq, Nq, D), q.dtype)
    stats = request.allocate((B, Hq, Nq), side, tensors.empty)
    lse = stats.lse
    off_vals = tensors.values(list(request.offsets) or [0], torch.int32)
    first = side.first_key
    tok, tokp = (side.token_ids, side.prev_token_ids) if flags["HAS_TOK"] else (off_vals, off_vals)  # read if on
    if flags["HAS_PAD"]:
        kpm = side.key_padding_mask.to(torch.int8)
        kpm_strides = tuple(kpm.stride())
    else:
        kpm, kpm_strides = first, (0, 0)  # never read
    span = side.span.to(torch.int32) if flags["HAS_SPAN"] else off_vals
    sink_logits = request.sinks.to(torch.float32) if flags["HAS_SINKS"] else lse  # never read when off

    def or_lse(t):  # an output that is off: any float32 pointer, never written
        return lse if t is None else t

    qk_scale, cap_in = score_scales(request.scale, request.softcap)
    st = stats
    args = (
        q, k, v, out, lse, st.sink, or_lse(st.offsets), or_lse(st.probes), or_lse(st.induction), or_lse(st.duplicate),
        or_lse(st.entropy), or_lse(st.distance), or_lse(st.local), st.top1_index if request.top1 else first,
        or_lse(st.top1_prob), or_lse(st.span), or_lse(st.learned_sink),
        tok, tokp, kpm, first, off_vals, side.probe_keys if flags["N_PROBES"] else off_vals, span, sink_logits,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *kpm_strides,
        Hq, Hq // Hkv, Nq, Nk, qk_scale, cap_in, request.window or 0, request.local_window or 0,
    )
    constexprs = dict(HEAD_DIM=D, BLOCK_D=head_block(D), **flags, FP32_INPUT=q.dtype == torch.float32)
    return KernelLaunch(args=args, constexprs=constexprs, grid_rows=(Nq, B * Hq), bucket=tuner_bucket(Nq),
                        out=out, stats=stats)


def attention_with_stats_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, request: StatsRequest,
                                side: SideInputs, block: Optional[tuple[int, int]] = None,
                                ) -> tuple[torch.Tensor, AttentionStats]:
    """Launch the fused kernel. Inputs are assumed validated by ``attention_with_stats``.

    ``block=(BLOCK_M, BLOCK_N)`` forces a tile shape (tests, benchmarks); otherwise a pinned config
    (``pinning``), else the autotuner on GPU (``autotune``), else ``INTERPRET_BLOCK`` under the
    interpreter."""
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be at most {MAX_HEAD_DIM} for the Triton kernel, got {q.shape[-1]} "
                         "(the torch backend takes any head_dim)")
    launch = launch_arguments(q, k, v, request, side)
    n_rows, n_programs = launch.grid_rows
    pinned = None if block else fused_pin(head_dim=q.shape[-1], elt_bytes=q.element_size(),
                                          constexprs=launch.constexprs)
    tile = dict(zip(("BLOCK_M", "BLOCK_N"), block or (INTERPRET_BLOCK, INTERPRET_BLOCK)))
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]), n_programs)  # noqa: E731
    with device_guard(q.device):  # Triton launches on the current device: make it q's
        if pinned is not None:
            _attn_stats_fwd[grid](*launch.args, **launch.constexprs, **pinned.all_kwargs())
        elif block or interpreting():
            _attn_stats_fwd[grid](*launch.args, **launch.constexprs, **tile)
        else:
            FUSED_TUNER[grid](*launch.args, **launch.constexprs, **length_buckets(n_rows, k.shape[2]))
    return launch.out, launch.stats
