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
* distance: one multiply-add per score, ``sum_j p_j (q0 - j) = (q0 - start_n) sum_j p_j -
  sum_j p_j jj`` with ``q0`` the block's first query and ``jj`` the loop-invariant offsets in the
  tile (``sum_j p_j`` is the row sum's); ``i - q0`` times the row sum is added in the epilogue.
* top1: a per-row select of the tile start where the tile max beats the running max; the
  epilogue re-scores each distinct winning tile once to find the key (``top1_in_tiles``: one
  ``q k^T`` tile per distinct winner, data-dependent). Its probability is ``2^(m_i - lse2)``
  from the running max itself.
* local and span: a masked sum, only in the unmasked segments of tiles that reach some row's last
  ``local_window`` keys or overlap the span (``range_stat_segments``); the other tiles run a loop
  compiled without that code (a rescale of the two sums per row only).
* softcap: before masking; one ``tanh.approx.f32`` per score with 16-bit inputs (as FlashAttention;
  relative error <= 2^-11), ``exp2`` and an approximate reciprocal with fp32 (``tanh_softcap``).
* sliding window: no per-score work in the unmasked tiles; tiles that cross the left edge of some
  row's window run a masked stage of their own, tiles left of every row's window are skipped.
* learned sinks: epilogue only (one more outcome in the log-sum-exp).

Any head dim from 1 to 256 runs: the tile is padded on chip to ``BLOCK_D`` (the next power of
two, at least 16) with masked loads, so padding costs no HBM traffic. K and V tiles come through
TMA tensor descriptors where their layout allows (``TMA_KV``, ``triton_common.tma_ready``; built on
the device, so the launch sets a scratch allocator), which hold no address registers (at D = 128
that is what lets a 128x128 tile compile without spills); other layouts load through pointers.
fp32 inputs run on the tensor cores as 3xTF32 (``input_precision="tf32x3"``), which keeps
fp32-level accuracy.

Statistics that were not requested are compiled out (``tl.constexpr`` flags): their outputs are
passed as None and ``triton.heuristics`` turns that into the flags (``FUSED_HEURISTICS``).
``launch_arguments`` builds a launch's arguments by parameter name, from tensors or from
shape-only stand-ins (``kernels.aot``), so the ahead-of-time compile test compiles exactly what
the launcher runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import triton
import triton.language as tl

from .autotune import fused_tuner, length_buckets, tuner_bucket
from .pinning import fused_pin
from .request import StatsRequest
from .side_inputs import SideInputs
from .stats import AttentionStats
from .triton_common import (LN2, LOG2E_K, MAX_HEAD_DIM, TorchTensors, check_grid, derived_flags, device_guard,
                            device_smem_limit, extent, given, head_block, initial_loop_state, interpreting,
                            join_learned_sink, point_prob, program_heads, range_stat_segments, row_entropy2,
                            run_with_scratch, score_scales, side_input_rows, store_lse, store_point_probs, stride_args,
                            tanh_softcap, tma_ready, top1_in_tiles)


@triton.jit
def kv_sources(Kb, Vb, Nk, stride_kn, stride_vn, TMA_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """What the key loops read K and V tiles from: with TMA_KV tensor descriptors of the
    (batch, head)'s ``[Nk, HEAD_DIM]`` rows (TMA on sm_90: no address registers, zeros beyond
    ``Nk`` and ``HEAD_DIM``), else the base pointers ``Kb``, ``Vb``."""
    if TMA_KV:
        k_src = tl.make_tensor_descriptor(Kb, [Nk, HEAD_DIM], [stride_kn, 1], [BLOCK_N, BLOCK_D])
        v_src = tl.make_tensor_descriptor(Vb, [Nk, HEAD_DIM], [stride_vn, 1], [BLOCK_N, BLOCK_D])
    else:
        k_src = Kb
        v_src = Vb
    return k_src, v_src


@triton.jit
def kv_tile_offsets(stride_kn, stride_kd, stride_vn, stride_vd, TMA_KV: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """In-tile int32 offsets of the K^T ``[BLOCK_D, BLOCK_N]`` and V ``[BLOCK_N, BLOCK_D]`` tiles,
    computed once (only the tile's 64-bit base moves); 0 with TMA_KV (descriptors need none)."""
    k_off = 0
    v_off = 0
    if not TMA_KV:
        offs_j = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        k_off = offs_j[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_off = offs_j[:, None] * stride_vn + offs_d[None, :] * stride_vd
    return k_off, v_off


@triton.jit
def kv_tile(src, off, start_n, stride_n, in_range, MASKED: tl.constexpr, TMA_KV: tl.constexpr, KEY: tl.constexpr,
            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """The tile of keys ``start_n ..`` from ``kv_sources``'s ``src``: K^T ``[BLOCK_D, BLOCK_N]``
    (KEY) or V ``[BLOCK_N, BLOCK_D]``, zeros at padded head dims (BLOCK_D > HEAD_DIM: masked, no
    HBM traffic) and, in the MASKED stage (the ragged end of the keys lives there only), at keys
    outside ``in_range``."""
    if TMA_KV:
        tile = src.load([start_n, 0])
        if KEY:
            tile = tile.T
    else:
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        ptrs = src + start_n.to(tl.int64) * stride_n + off
        if KEY:
            d_ok = d_ok[:, None]
            n_ok = in_range[None, :]
        else:
            d_ok = d_ok[None, :]
            n_ok = in_range[:, None]
        if MASKED:
            if BLOCK_D != HEAD_DIM:
                tile = tl.load(ptrs, mask=d_ok & n_ok, other=0.0)
            else:
                tile = tl.load(ptrs, mask=n_ok, other=0.0)
        else:
            if BLOCK_D != HEAD_DIM:
                tile = tl.load(ptrs, mask=d_ok, other=0.0)
            else:
                tile = tl.load(ptrs)
    return tile


@triton.jit
def _attn_fwd_inner(
    state, rows, keys, limits, lo, hi,
    MASKED: tl.constexpr, RANGE_STATS: tl.constexpr, HAS_PAD: tl.constexpr, HAS_TOK: tl.constexpr,
    HAS_ENT: tl.constexpr, FP32_INPUT: tl.constexpr, TMA_KV: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_DIST: tl.constexpr,
    HAS_LOCAL: tl.constexpr, HAS_TOP1: tl.constexpr, HAS_SPAN: tl.constexpr,
):
    """Online-softmax sweep over key tiles [lo, hi).

    ``state``: the running sums (``_attn_stats_fwd``'s ``state``, returned updated); ``rows``:
    ``(q, q_pos, q_tok, q0)``, ``q0`` the block's first query position; ``keys``: the (batch,
    head)'s K and V (tensor descriptors with TMA_KV, else pointers), token, previous-token and
    padding-mask pointers and the strides; ``limits``:
    ``(Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi)``.

    With MASKED=False every key of every tile is strictly before every query of the block,
    inside [0, Nk) and inside every row's sliding window, so no causal, range or window mask is
    built (the bulk of the work). With RANGE_STATS=False no tile reaches a row's local window or
    the span: local and span sums are only rescaled."""
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_tile = state
    q, q_pos, q_tok, q0 = rows
    K, V, TOK, TOKP, KPM, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn = keys
    Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi = limits
    offs_j = tl.arange(0, BLOCK_N)
    jj = offs_j.to(tl.float32)  # key offsets within a tile, for the distance
    k_off, v_off = kv_tile_offsets(stride_kn, stride_kd, stride_vn, stride_vd, TMA_KV, BLOCK_N, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_j
        in_range = offs_n < Nk
        k = kv_tile(K, k_off, start_n, stride_kn, in_range, MASKED, TMA_KV, True, HEAD_DIM, BLOCK_D)
        if FP32_INPUT:
            qk = tl.dot(q, k, input_precision="tf32x3")
        else:
            qk = tl.dot(q, k)
        if HAS_SOFTCAP:  # capped before masking: tanh(-inf) would un-mask a key
            qk = tanh_softcap(qk, cap_in, FP32_INPUT)

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
        if HAS_TOP1:  # the tile of the running max only (strictly greater: ties keep the earlier
            top_tile = tl.where(tile_max > m_i, start_n, top_tile)  # tile); the epilogue finds the key
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
        if HAS_DIST:  # sum_j p_j (q0 - j) = (q0 - start_n) sum_j p_j - sum_j p_j jj: one FMA per
            # score, jj loop-invariant; the row's i - q0 is added at the end
            dist_acc = dist_acc * alpha + (q0 - start_n).to(tl.float32) * tl.sum(p, 1) - tl.sum(p * jj[None, :], 1)
        if HAS_LOCAL:
            loc_acc = loc_acc * alpha
            if RANGE_STATS:  # only tiles that reach into some row's last local_window keys do work
                if start_n + BLOCK_N > q0 - local_window + 1:
                    in_local = offs_n[None, :] > q_pos[:, None] - local_window
                    loc_acc += tl.sum(tl.where(in_local, p, 0.0), 1)
        if HAS_SPAN:
            span_acc = span_acc * alpha
            if RANGE_STATS:  # only tiles that overlap [span_lo, span_hi) do work
                if (start_n < span_hi) & (start_n + BLOCK_N > span_lo):
                    in_span = (offs_n >= span_lo) & (offs_n < span_hi)
                    span_acc += tl.sum(tl.where(in_span[None, :], p, 0.0), 1)

        l_i = l_i * alpha + tl.sum(p, 1)  # the same sum as the distance's (one reduction)
        v = kv_tile(V, v_off, start_n, stride_vn, in_range, MASKED, TMA_KV, False, HEAD_DIM, BLOCK_D)
        acc = acc * alpha[:, None]
        if FP32_INPUT:
            acc = tl.dot(p, v, acc, input_precision="tf32x3")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_tile


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
    HAS_PAD: tl.constexpr, HAS_TOK: tl.constexpr, HAS_ENT: tl.constexpr, FP32_INPUT: tl.constexpr, TMA_KV: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_DIST: tl.constexpr, HAS_LOCAL: tl.constexpr, HAS_TOP1: tl.constexpr, HAS_SPAN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh, b, h, kvh = program_heads(Hq, GROUP)

    Qb = Q + b * stride_qb + h * stride_qh
    Kb = K + b * stride_kb + kvh * stride_kh
    Vb = V + b * stride_vb + kvh * stride_vh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < Nq
    # Bottom-right causal alignment: query row i sits at absolute key position Nk - Nq + i.
    q_pos = (Nk - Nq) + offs_m
    offs_r = tl.arange(0, BLOCK_M)
    Qm = Qb + (start_m * BLOCK_M).to(tl.int64) * stride_qm
    q = tl.load(Qm + offs_r[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)

    TOKb, TOKPb, KPMb, q_tok, span_lo, span_hi = side_input_rows(TOK, TOKP, KPM, SPAN, FIRST, b, Nk, stride_mb, q_pos,
                                                                 row_ok, BLOCK_M, HAS_TOK, HAS_PAD, HAS_SPAN)

    # Keys before the first unpadded key (left padding) are never attended: skip their tiles;
    # so are keys left of every row's sliding window.
    first = tl.load(FIRST + b)
    q0 = Nk - Nq + start_m * BLOCK_M  # the block's first query position
    lo = 0
    if HAS_PAD:
        lo = (first // BLOCK_N) * BLOCK_N
    if HAS_WINDOW:
        lo = tl.maximum(lo, (tl.maximum(q0 - window + 1, 0) // BLOCK_N) * BLOCK_N)
    # Stages, in key order: 0, with a window, the tiles that cross the left edge of some row's
    # window (keys before q0 + BLOCK_M - window), masked; 1-4, the tiles entirely before the
    # block's first query position (so strictly before every query of the block), unmasked, cut
    # into segments (plain, range, plain, range) so that only the tiles reaching some row's local
    # window or the span carry that code (``range_stat_segments``; stage 1 alone without local
    # and span); 5, the tiles at the diagonal and the ragged end of the keys, masked.
    mid = tl.maximum((q0 // BLOCK_N) * BLOCK_N, lo)
    hi = tl.minimum(q0 + BLOCK_M, Nk)
    edge = lo
    if HAS_WINDOW:
        edge = tl.cdiv(tl.maximum(q0 + BLOCK_M - window, 0), BLOCK_N) * BLOCK_N
        edge = tl.minimum(tl.maximum(edge, lo), mid)
    SEGMENTED: tl.constexpr = HAS_LOCAL or HAS_SPAN
    cut1, cut2, cut3 = range_stat_segments(edge, mid, q0, local_window, span_lo, span_hi, HAS_LOCAL, HAS_SPAN,
                                           BLOCK_N)
    bounds = (lo, edge, cut1, cut2, cut3, mid, hi)

    state = initial_loop_state(BLOCK_M, BLOCK_D)  # the running sums; top1: the tile of the running max
    rows = (q, q_pos, q_tok, q0)
    k_src, v_src = kv_sources(Kb, Vb, Nk, stride_kn, stride_vn, TMA_KV, HEAD_DIM, BLOCK_N, BLOCK_D)
    keys = (k_src, v_src, TOKb, TOKPb, KPMb, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn)
    limits = (Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi)
    for stage in tl.static_range(6):
        if (HAS_WINDOW or stage != 0) and (SEGMENTED or stage == 0 or stage == 1 or stage == 5):
            state = _attn_fwd_inner(
                state, rows, keys, limits, bounds[stage], bounds[stage + 1], stage == 0 or stage == 5,
                stage == 0 or stage == 2 or stage == 4 or stage == 5, HAS_PAD, HAS_TOK, HAS_ENT, FP32_INPUT, TMA_KV,
                HEAD_DIM, BLOCK_D, BLOCK_N, HAS_WINDOW, HAS_SOFTCAP, HAS_DIST, HAS_LOCAL, HAS_TOP1, HAS_SPAN)
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_tile = state

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
    store_lse(LSE + row, lse2, has_key, out, d_ok, row_ok, HAS_SINKS)

    # Point probabilities: reload Q (in fp32) rather than keep it live through the loop. A key
    # left of a row's sliding window has probability 0.
    q_rows = Qb + offs_m.to(tl.int64) * stride_qm  # not q_ptrs: those would stay live through the loops
    q32 = tl.load(q_rows[:, None] + offs_d[None, :] * stride_qd, mask=row_ok[:, None] & d_ok[None, :],
                  other=0.0).to(tl.float32)
    first_vec = tl.zeros([BLOCK_M], dtype=tl.int32) + first
    sink_ok = has_key & (first_vec <= q_pos)
    if HAS_WINDOW:
        sink_ok = sink_ok & (first_vec > q_pos - window)
    tl.store(SINK + row, point_prob(q32, Kb, first_vec, sink_ok & row_ok, q_pos, window, KPMb, stride_mn, stride_kn,
                                    stride_kd, offs_d, d_ok, qk_scale, cap_in, lse2, False, False, HAS_SOFTCAP),
             mask=row_ok)
    store_point_probs(OFFS, row * N_OFFSETS, row_ok, OFFSET_VALUES, b, q32, Kb, has_key & row_ok, 0, Nk, q_pos, window,
                      KPMb, stride_mn, stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in, lse2, N_OFFSETS, False,
                      False, HAS_WINDOW, HAS_PAD, HAS_SOFTCAP)
    store_point_probs(PRB, row * N_PROBES, row_ok, PROBE_KEYS, b, q32, Kb, has_key & row_ok, 0, Nk, q_pos, window,
                      KPMb, stride_mn, stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in, lse2, N_PROBES, True,
                      False, HAS_WINDOW, HAS_PAD, HAS_SOFTCAP)

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
        top_idx = top1_in_tiles(q, top_tile, has_key & row_ok, q_pos, Kb, KPMb, Nk, window, cap_in, stride_kn,
                                stride_kd, stride_mn, HEAD_DIM, BLOCK_D, BLOCK_N, "tf32x3" if FP32_INPUT else "tf32",
                                HAS_WINDOW, HAS_PAD, HAS_SOFTCAP)
        tl.store(TOP_I + row, top_idx.to(tl.int64), mask=row_ok)
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

# The feature flags that follow from which optional tensors a launch passes (None when absent).
FUSED_HEURISTICS = dict(
    N_OFFSETS=extent("OFFSET_VALUES", 0), N_PROBES=extent("PROBE_KEYS", 1), HAS_PAD=given("KPM"),
    HAS_TOK=given("TOK"), HAS_ENT=given("ENT"), HAS_DIST=given("DIST"), HAS_LOCAL=given("LOC"),
    HAS_TOP1=given("TOP_I"), HAS_SPAN=given("SPAN"), HAS_SINKS=given("SINK_LOGITS"), TMA_KV=tma_ready("K", "V"),
)
# Decode steps grow Nk by one key: the decode bucket runs a copy of the kernel that does not
# specialise Nk (Triton specialises integers on divisibility by 16), so that generation never stalls
# on a recompile when Nk reaches a multiple of 16. Prefill keeps the specialisation: its token-id
# loads vectorise on it (without it the sm_90 hot loop of D=128 bf16 with token statistics, tile
# 128x64 w8 s3, grows from 718 to 788 instructions and spills 24 B).
FUSED_DECODE_KERNEL = triton.jit(do_not_specialize=["Nk"])(_attn_stats_fwd.fn)
FUSED_DECODE_TUNER = fused_tuner(FUSED_DECODE_KERNEL)


def fused_kernel(bucket: str) -> Any:
    """The jit kernel that launches of autotune ``bucket`` run (``kernels.aot`` compiles it)."""
    return FUSED_DECODE_KERNEL if bucket == "decode" else _attn_stats_fwd


def with_flags(kernel: Any) -> Any:
    """``kernel`` (a jit kernel or its autotuner) behind ``triton.heuristics(FUSED_HEURISTICS)``:
    the flags are derived first, so that they reach the autotuner's key."""
    return triton.heuristics(FUSED_HEURISTICS)(kernel)


@dataclass(frozen=True)
class KernelLaunch:
    """Everything one launch of ``_attn_stats_fwd`` needs except the tile config.

    ``args``: the kernel's runtime parameters by name (None: an optional tensor that is absent);
    ``constexprs``: its compile-time parameters that do not follow from ``args`` (``flags()``: all
    of them but the tile); ``grid_rows``: ``(Nq, B * Hq)``, the grid is ``(cdiv(Nq, BLOCK_M), B * Hq)``;
    ``bucket``: autotune bucket (``tuner_bucket``); ``out``/``stats``: the output tensors."""

    args: dict
    constexprs: dict
    grid_rows: tuple[int, int]
    bucket: str
    out: Any
    stats: AttentionStats

    def flags(self) -> dict:
        """Every constexpr of the launch but the tile: ``constexprs`` and the heuristics' flags."""
        return {**self.constexprs, **derived_flags(FUSED_HEURISTICS, self.args)}

    def grid(self, block_m: int) -> tuple[int, int]:
        n_rows, n_programs = self.grid_rows
        return triton.cdiv(n_rows, block_m), n_programs


def launch_arguments(q: Any, k: Any, v: Any, request: StatsRequest, side: SideInputs,
                     tensors: Optional[Any] = None) -> KernelLaunch:
    """Allocate the outputs and build the arguments of one launch, by kernel parameter name.

    ``q [B, Hq, Nq, D]``, ``k``/``v [B, Hkv, Nk, D]`` are tensors, or shape-only stand-ins
    (``kernels.aot.TensorSpec``) together with ``tensors=kernels.aot.SpecTensors()``; by default
    outputs are allocated with ``TorchTensors(q.device)``. Inputs are assumed validated
    (``dispatch.attention_with_stats``)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    tensors = tensors or TorchTensors(q.device)
    out = tensors.empty((B, Hq, Nq, D), q.dtype)
    st = request.allocate((B, Hq, Nq), side, tensors.empty)
    kpm = side.kernel_padding_mask()
    qk_scale, cap_in = score_scales(request.scale, request.softcap)
    args = dict(
        Q=q, K=k, V=v, Out=out, LSE=st.lse, SINK=st.sink, OFFS=st.offsets, PRB=st.probes, IND=st.induction,
        DUP=st.duplicate, ENT=st.entropy, DIST=st.distance, LOC=st.local, TOP_I=st.top1_index, TOP_P=st.top1_prob,
        SPANM=st.span, LEARNED=st.learned_sink, TOK=side.token_ids, TOKP=side.prev_token_ids, KPM=kpm,
        FIRST=side.first_key, OFFSET_VALUES=tensors.values(request.offsets) if request.offsets else None,
        PROBE_KEYS=side.probe_keys, SPAN=side.span.to(torch.int32) if side.span is not None else None,
        SINK_LOGITS=request.sinks.to(torch.float32) if request.sinks is not None else None,
        **stride_args(q, ("stride_qb", "stride_qh", "stride_qm", "stride_qd")),
        **stride_args(k, ("stride_kb", "stride_kh", "stride_kn", "stride_kd")),
        **stride_args(v, ("stride_vb", "stride_vh", "stride_vn", "stride_vd")),
        **stride_args(out, ("stride_ob", "stride_oh", "stride_om", "stride_od")),
        **stride_args(kpm, ("stride_mb", "stride_mn")),
        Hq=Hq, GROUP=Hq // Hkv, Nq=Nq, Nk=Nk, qk_scale=qk_scale, cap_in=cap_in, window=request.window or 0,
        local_window=request.local_window or 0,
    )
    constexprs = dict(HEAD_DIM=D, BLOCK_D=head_block(D), FP32_INPUT=q.dtype == torch.float32,
                      HAS_WINDOW=request.window is not None, HAS_SOFTCAP=request.softcap is not None)
    return KernelLaunch(args=args, constexprs=constexprs, grid_rows=(Nq, B * Hq), bucket=tuner_bucket(Nq),
                        out=out, stats=st)


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
    B, Hq, Nq, _ = q.shape
    # One program per (batch, head) on axis y, as the tutorial (a 3-D grid cost sm_90 hot-loop
    # instructions): at most 65535 of them.
    check_grid((triton.cdiv(Nq, 16), B * Hq), "fused", ("query blocks", "batch x query heads"))
    launch = launch_arguments(q, k, v, request, side)
    pinned = None if block else fused_pin(head_dim=q.shape[-1], elt_bytes=q.element_size(), constexprs=launch.flags(),
                                          smem_limit=device_smem_limit(q.device))
    if pinned is not None or block or interpreting():
        kernel = fused_kernel(launch.bucket)
        tile = pinned.all_kwargs() if pinned else dict(zip(("BLOCK_M", "BLOCK_N"), block or (INTERPRET_BLOCK,) * 2))
    else:
        kernel = FUSED_DECODE_TUNER if launch.bucket == "decode" else FUSED_TUNER
        tile = length_buckets(Nq, k.shape[2])
    with device_guard(q.device):  # Triton launches on the current device: make it q's
        # K and V tensor descriptors (TMA_KV) take global scratch
        run_with_scratch(lambda: with_flags(kernel)[lambda meta: launch.grid(meta["BLOCK_M"])](
            **launch.args, **launch.constexprs, **tile), q.device)
    return launch.out, launch.stats
