"""Split-key ("flash-decoding") attention with statistics, for decode-sized query blocks.

The fused kernel in ``triton_attention.py`` runs one program per (query block, batch, head).
Generating with a KV cache gives ``Nq = 1`` (or a few speculative/chunked queries), so a batch
of a few sequences has only ``B x Hq`` programs, each walking all ``Nk`` keys: on a 132-SM GPU
most SMs idle while a long context is read by a handful of them. Here the keys are split:

1. **Split kernel** (``_decode_split_fwd``), grid ``(n_splits, row_blocks, B * Hkv)``. Each
   program owns one key split ``[k_lo, k_hi)`` (``split_len`` keys, a multiple of the key tile)
   and 16 rows of one KV head: the ``GROUP x Nq`` (query head, query) pairs that share it under
   GQA/MQA are packed into the tile's rows, so K/V are read once per KV head and row block, not
   once per query head. It runs the usual online softmax over its split and writes *un-normalised* partials in
   base-2 units (``s2 = s * log2 e``), relative to its own running max ``m_s``:

   ======================  ==========================================================
   ``m_s``                 max of ``s2_j`` over the split's attendable keys (-1e30 if none)
   ``l_s``                 ``sum_j 2^(s2_j - m_s)``
   ``o_s``  ``[D]``        ``sum_j 2^(s2_j - m_s) v_j``
   ``x_s``  (per point)    ``2^(s2_key - m_s)`` if the point key (sink, offset, probe) lies in
                           this split and is attendable, else 0
   ``x_s``  (per mask)     ``sum_{j in mask} 2^(s2_j - m_s)`` (token-match induction/duplicate)
   ``e_s``                 ``sum_j 2^(s2_j - m_s) (s2_j - m_s)`` (entropy; the loop re-centres
                           it when ``m`` grows: ``e <- alpha (e + l (m_old - m_new))``)
   ``x_s``  (distance)     ``sum_j 2^(s2_j - m_s) (i - j)``; local and span: masked sums as above
   ``t_s``                 the split's top-1 key (the first key reaching ``m_s``), -1 if none:
                           the loop keeps the tile, the epilogue re-scores it
   ======================  ==========================================================

2. **Combine kernel** (``_decode_combine``), one program per ``BLOCK_R`` flat (batch, head,
   query) rows, merges the splits exactly. With ``M = max_s m_s`` and ``w_s = 2^(m_s - M)``:

   * ``L = sum_s w_s l_s``; ``lse = (M + log2 L) ln 2``.
   * ``out = sum_s w_s o_s / L``.
   * every point and token-match statistic: ``X = sum_s w_s x_s / L``. For a point key owned by
     split ``t`` this is ``2^(s2_key - M) / L = 2^(s2_key - lse2)``: the final probability,
     although no split knew the final lse.
   * entropy: ``E = sum_j 2^(s2_j - M)(s2_j - M) = sum_s w_s (e_s + l_s (m_s - M))`` (each
     split's sum re-centred from ``m_s`` to ``M``), then ``H = (log2 L - E / L) ln 2`` nats,
     since ``-sum_j p_j log2 p_j = log2 L - E / L`` with ``p_j = 2^(s2_j - M) / L``.
   * top-1: ``t_s`` of the first split whose ``m_s`` equals ``M`` (ties go to the earlier key),
     probability ``2^(M - lse2)``.
   * learned sinks (``sinks``): the sink logit joins the log-sum-exp here, ``lse2 =
     log2(L 2^M + 2^sink2)``, and every sum is normalised by ``2^(M - lse2)`` instead of ``1 / L``
     (the fused kernel's epilogue does the same). Softcapping and sliding windows act on the
     scores inside the split kernel (a window also skips the splits' tiles left of it).

   The kernel evaluates these in one pass over the splits, re-centring its running sums when
   the running max grows exactly as the key loop does (a split acts as one "key" of weight
   ``l_s`` at score ``m_s``). These are identities, not approximations: the result equals the
   unsplit computation up to float32 rounding. Splits with no attendable key (left padding, ``m_s = -1e30``, ``l_s = 0``)
   get ``w_s = 0``; a row with no attendable key anywhere has ``L = 0`` and gets output 0,
   statistics 0 and ``lse = -inf``, like the fused kernel.

The combine is a second small Triton kernel rather than a torch epilogue: one launch instead of
a dozen torch ops (and their temporaries) per layer and decode step, where each step is short
enough for launches to matter, with the entropy and point columns handled in the same pass.
The partials cost ``n_splits x B x Hq x Nq x (BLOCK_D + N_COLS)`` float32s, transient.

Point probabilities are computed in the split that owns the key, from one gathered key row
(``q . k_key``), as in the fused kernel's epilogue, but relative to the split's max instead of
the final lse: so the split kernel needs no second pass and the combine needs no ``q`` or ``K``.

Head dims that are not a power of two are padded on chip to ``BLOCK_D`` (masked loads, zeros in
the padded columns). fp32 inputs use exact fp32 dots (``input_precision="ieee"``, CUDA cores):
a decode tile has 16 rows, so that is 16 FMAs per 4-byte K/V element read, which should leave
the loop bound by memory (not measured); ``tf32x3`` tensor-core dots spilled on sm_90 at
D >= 128 (the operand tiles and their tf32 halves stay in registers).

Performance has not been measured (no GPU was available); the kernels compile for sm_90 without
spills in the configurations the pruner keeps (checked ahead of time on a CPU).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import torch
import triton
import triton.language as tl

from .autotune import SPLIT_CONFIGS, split_candidates, split_len_error, split_tuner, split_tuning_keywords
from .pinning import split_pin
from .request import StatsRequest, torch_allocator
from .side_inputs import SideInputs
from .stats import AttentionStats
from .triton_common import (LN2, LOG2E_K, NEG_BIG, TorchTensors, check_grid, device_guard, device_smem_limit, extent,
                            given, head_block, initial_loop_state, interpreting, join_learned_sink, kernel_flags,
                            point_prob, range_stat_segments, row_entropy2, score_scales, side_input_rows, store_lse,
                            store_point_probs, stride_args, tanh_softcap, top1_in_tiles)

# Calls with more queries than this go to the fused kernel (its 16-row decode tiles and up).
DECODE_MAX_QUERIES = 16
# Split lengths are multiples of the largest key tile, so every autotuned BLOCK_N divides them.
SPLIT_ALIGN = 128
# A split shorter than this does too little work to pay for its partials and the combine.
MIN_SPLIT_KEYS = 256
MAX_SPLITS = 128
# Aim for this many programs per SM (two waves hide the ragged tail of the last one).
PROGRAMS_PER_SM = 2
# No GPU (TRITON_INTERPRET=1 on the CPU): a nominal SM count, so that the routing is exercised
# by tests; it says nothing about CPU speed.
NOMINAL_SM_COUNT = 4
# Fixed tiles under the interpreter (programs run serially on the CPU there).
INTERPRET_BLOCK_N = 16
# Packed (query head, query) rows per split program, the smallest tl.dot. Decode with Nq = 1 and
# GQA groups up to 16 fits in one row block; sm_90 compiles of 32- and 64-row tiles with all
# statistics spilled with 4 warps, so larger packs are split into more row blocks instead.
ROWS_BLOCK = 16


# ---------------------------------------------------------------------------------------------
# Split kernel
# ---------------------------------------------------------------------------------------------


@triton.jit
def _sweep(
    state, rows, keys, limits, start, stop,
    MASKED: tl.constexpr, RANGE_STATS: tl.constexpr, HAS_PAD: tl.constexpr, HAS_TOK: tl.constexpr,
    HAS_ENT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_DIST: tl.constexpr,
    HAS_LOCAL: tl.constexpr, HAS_TOP1: tl.constexpr, HAS_SPAN: tl.constexpr,
):
    """Online softmax over the key tiles [start, stop).

    ``state``: the running sums (returned updated); ``rows``: ``(q, q_pos, q_tok)``; ``keys``:
    the (batch, KV head)'s K, V, token, previous-token and padding-mask pointers and their
    strides; ``limits``: ``(Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi)``.
    MASKED=False: every key of every tile is inside [0, Nk), at or before every query row and
    inside every row's window, so only the padding mask (if any) is applied (the bulk of a long
    split). RANGE_STATS=False: no tile reaches a row's local window or the span (local and span
    sums are only rescaled). The per-row sums of the other statistics follow the fused kernel's
    loop; top1 keeps the tile of the running max (``top1_in_tiles`` finds the key)."""
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_tile = state
    q, q_pos, q_tok = rows
    Kb, Vb, TOKb, TOKPb, KPMb, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn = keys
    Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi = limits
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    PAD_D: tl.constexpr = BLOCK_D != HEAD_DIM
    jj = tl.arange(0, BLOCK_N).to(tl.float32)  # key offsets within a tile, for the distance
    for start_n in range(start, stop, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = Kb + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = Vb + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :] * stride_vd
        if MASKED:
            in_range = offs_n < Nk
            if PAD_D:
                k = tl.load(k_ptrs, mask=d_ok[:, None] & in_range[None, :], other=0.0)
            else:
                k = tl.load(k_ptrs, mask=in_range[None, :], other=0.0)
        elif PAD_D:
            k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION)
        if HAS_SOFTCAP:  # capped before masking
            qk = tanh_softcap(qk, cap_in, q.dtype == tl.float32)
        s2 = qk * qk_scale  # [BLOCK_M, BLOCK_N], log2 units

        if MASKED:
            keep = (offs_n[None, :] <= q_pos[:, None]) & in_range[None, :]
            if HAS_WINDOW:
                keep = keep & (offs_n[None, :] > q_pos[:, None] - window)
            if HAS_PAD:
                kpm = tl.load(KPMb + offs_n.to(tl.int64) * stride_mn, mask=in_range, other=0)
                keep = keep & (kpm != 0)[None, :]
            s2 = tl.where(keep, s2, float("-inf"))
        elif HAS_PAD:
            kpm = tl.load(KPMb + offs_n.to(tl.int64) * stride_mn)
            s2 = tl.where((kpm != 0)[None, :], s2, float("-inf"))

        tile_max = tl.max(s2, 1)
        if HAS_TOP1:  # strictly greater: ties keep the earlier tile
            top_tile = tl.where(tile_max > m_i, start_n, top_tile)
        m_new = tl.maximum(m_i, tile_max)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s2 - m_new[:, None])  # 0 on masked keys

        if HAS_ENT:  # e = sum_j p_j (s2_j - m): re-centre the old sum on the new max, then add
            ent_acc = alpha * (ent_acc + l_i * (m_i - m_new))
            ent_acc += tl.sum(p * tl.where(p > 0, s2 - m_new[:, None], 0.0), 1)
        if HAS_TOK:
            if MASKED:
                k_tok = tl.load(TOKb + offs_n, mask=in_range, other=-1)
                k_prev = tl.load(TOKPb + offs_n, mask=in_range, other=-1)
            else:
                k_tok = tl.load(TOKb + offs_n)
                k_prev = tl.load(TOKPb + offs_n)
            # duplicate: same token strictly before the query; induction: the key's predecessor
            # holds the query token (prev ids are -1 where j-1 is missing or padded).
            is_dup = (k_tok[None, :] == q_tok[:, None]) & (offs_n[None, :] < q_pos[:, None])
            is_ind = k_prev[None, :] == q_tok[:, None]
            dup_acc = dup_acc * alpha + tl.sum(tl.where(is_dup, p, 0.0), 1)
            ind_acc = ind_acc * alpha + tl.sum(tl.where(is_ind, p, 0.0), 1)
        if HAS_DIST:  # sum_j p_j (i - j) = (i - start_n) sum_j p_j - sum_j p_j jj (jj loop-invariant)
            dist_acc = dist_acc * alpha + (q_pos - start_n).to(tl.float32) * tl.sum(p, 1) - tl.sum(p * jj[None, :], 1)
        if HAS_LOCAL:
            loc_acc = loc_acc * alpha
            if RANGE_STATS:
                loc_acc += tl.sum(tl.where(offs_n[None, :] > q_pos[:, None] - local_window, p, 0.0), 1)
        if HAS_SPAN:
            span_acc = span_acc * alpha
            if RANGE_STATS:
                in_span = (offs_n >= span_lo) & (offs_n < span_hi)
                span_acc += tl.sum(tl.where(in_span[None, :], p, 0.0), 1)

        l_i = l_i * alpha + tl.sum(p, 1)  # the same sum as the distance's (one reduction)
        if MASKED:
            if PAD_D:
                v = tl.load(v_ptrs, mask=in_range[:, None] & d_ok[None, :], other=0.0)
            else:
                v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)
        elif PAD_D:
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_tile


# Nk grows every decode step: not specialised (on divisibility by 16), so that it never recompiles.
@triton.jit(do_not_specialize=["Nk"])
def _decode_split_fwd(
    Q, K, V, PART_O, PART_S,
    TOK, TOKP, KPM, FIRST, OFFSET_VALUES, PROBE_KEYS, SPAN,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mn,
    Hq, Hkv, GROUP, Nq, Nk, qk_scale, split_len, n_rows, cap_in, window, local_window,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, N_COLS: tl.constexpr,
    N_OFFSETS: tl.constexpr, N_PROBES: tl.constexpr, HAS_PAD: tl.constexpr, HAS_TOK: tl.constexpr,
    HAS_ENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_DIST: tl.constexpr,
    HAS_LOCAL: tl.constexpr, HAS_TOP1: tl.constexpr, HAS_SPAN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Partials of one key split for BLOCK_M (query head, query) rows of one (batch, KV head).

    Writes PART_O[split, row, :BLOCK_D] and PART_S[split, row, :N_COLS] for every valid row,
    including splits with no attendable key (m = -1e30, zeros), so the combine reads no garbage.
    Columns: m, l, sink, offsets, probes, [induction, duplicate], [distance], [local], [span],
    [top1 key], [entropy] (``partial_columns``)."""
    split = tl.program_id(0)
    bkv = tl.program_id(2).to(tl.int64)
    b = bkv // Hkv
    kvh = bkv % Hkv

    # Rows r = g * Nq + i: query head kvh * GROUP + g, query i (absolute key position Nk - Nq + i).
    r = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < GROUP * Nq
    g = r // Nq
    i = r - g * Nq
    h = kvh * GROUP + g
    q_pos = (Nk - Nq) + i
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptrs = (Q + b * stride_qb + h[:, None] * stride_qh + i[:, None].to(tl.int64) * stride_qm
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    Kb = K + b * stride_kb + kvh * stride_kh
    Vb = V + b * stride_vb + kvh * stride_vh
    TOKb, TOKPb, KPMb, q_tok, span_lo, span_hi = side_input_rows(TOK, TOKP, KPM, SPAN, FIRST, b, Nk, stride_mb, q_pos,
                                                                 row_ok, BLOCK_M, HAS_TOK, HAS_PAD, HAS_SPAN)

    k_lo = split * split_len
    k_hi = tl.minimum(k_lo + split_len, Nk)
    first = tl.load(FIRST + b)
    lo = k_lo
    if HAS_PAD:  # left padding: skip the split's tiles before the row's first attendable key
        lo = tl.minimum(tl.maximum(lo, (first // BLOCK_N) * BLOCK_N), k_hi)
    if HAS_WINDOW:  # keys left of the first query's window are never attended
        lo = tl.minimum(tl.maximum(lo, (tl.maximum(Nk - Nq - window + 1, 0) // BLOCK_N) * BLOCK_N), k_hi)
    # Keys <= Nk - Nq are attendable by every row: tiles ending there need no causal mask. With a
    # window (a decode window is at most a few tiles past ``lo``) every tile is masked.
    mid = tl.minimum(tl.maximum(((Nk - Nq + 1) // BLOCK_N) * BLOCK_N, lo), k_hi)
    if HAS_WINDOW:
        mid = lo

    # Stages 0-3: the unmasked tiles [lo, mid), cut so that only those reaching some row's local
    # window or the span run that code (plain, range, plain, range: ``range_stat_segments``;
    # stage 0 alone without local and span); stage 4: the masked tiles [mid, k_hi).
    SEGMENTED: tl.constexpr = HAS_LOCAL or HAS_SPAN
    cut1, cut2, cut3 = range_stat_segments(lo, mid, Nk - Nq, local_window, span_lo, span_hi, HAS_LOCAL, HAS_SPAN,
                                           BLOCK_N)
    bounds = (lo, cut1, cut2, cut3, mid, k_hi)
    state = initial_loop_state(BLOCK_M, BLOCK_D)  # the running sums; top1: the tile of the running max
    rows = (q, q_pos, q_tok)
    keys = (Kb, Vb, TOKb, TOKPb, KPMb, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn)
    limits = (Nk, qk_scale, cap_in, window, local_window, span_lo, span_hi)
    for stage in tl.static_range(5):
        if SEGMENTED or stage == 0 or stage == 4:
            state = _sweep(state, rows, keys, limits, bounds[stage], bounds[stage + 1], stage == 4,
                           stage == 1 or stage == 3 or stage == 4, HAS_PAD, HAS_TOK, HAS_ENT, HEAD_DIM, BLOCK_D,
                           DOT_PRECISION, BLOCK_N, HAS_WINDOW, HAS_SOFTCAP, HAS_DIST, HAS_LOCAL, HAS_TOP1, HAS_SPAN)
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc, dist_acc, loc_acc, span_acc, top_tile = state

    # Epilogue: un-normalised partials relative to this split's max m_i.
    row = (b * Hq + h) * Nq + i  # flat [B, Hq, Nq] row
    part = split.to(tl.int64) * n_rows + row
    tl.store(PART_O + part[:, None] * BLOCK_D + offs_d[None, :], acc, mask=row_ok[:, None])
    S = PART_S + part * N_COLS
    tl.store(S + 0, m_i, mask=row_ok)
    tl.store(S + 1, l_i, mask=row_ok)

    # Point keys: reload q (the loop's copy lives in the dot layout) and gather one key row each.
    qe = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    first_vec = tl.zeros([BLOCK_M], dtype=tl.int32) + first
    ok = row_ok & (first_vec <= q_pos) & (first_vec >= k_lo) & (first_vec < k_hi)
    tl.store(S + 2, point_prob(qe, Kb, first_vec, ok, q_pos, window, KPMb, stride_mn,
                               stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in, m_i, HAS_WINDOW, False,
                               HAS_SOFTCAP), mask=row_ok)
    # Offsets and probes: loops, not unrolled (one key row live at a time).
    store_point_probs(PART_S, part * N_COLS + 3, row_ok, OFFSET_VALUES, b, qe, Kb, row_ok, k_lo, k_hi, q_pos, window,
                      KPMb, stride_mn, stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in, m_i, N_OFFSETS, False,
                      True, HAS_WINDOW, HAS_PAD, HAS_SOFTCAP)
    store_point_probs(PART_S, part * N_COLS + 3 + N_OFFSETS, row_ok, PROBE_KEYS, b, qe, Kb, row_ok, k_lo, k_hi, q_pos,
                      window, KPMb, stride_mn, stride_kn, stride_kd, offs_d, d_ok, qk_scale, cap_in, m_i, N_PROBES,
                      True, True, HAS_WINDOW, HAS_PAD, HAS_SOFTCAP)
    c = 3 + N_OFFSETS + N_PROBES
    if HAS_TOK:
        tl.store(S + c, ind_acc, mask=row_ok)
        tl.store(S + c + 1, dup_acc, mask=row_ok)
        c += 2
    if HAS_DIST:
        tl.store(S + c, dist_acc, mask=row_ok)
        c += 1
    if HAS_LOCAL:
        tl.store(S + c, loc_acc, mask=row_ok)
        c += 1
    if HAS_SPAN:
        tl.store(S + c, span_acc, mask=row_ok)
        c += 1
    if HAS_TOP1:  # a key position, exact in float32 below 2^24
        top_idx = top1_in_tiles(q, top_tile, row_ok & (l_i > 0), q_pos, Kb, KPMb, Nk, window, cap_in, stride_kn,
                                stride_kd, stride_mn, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION, HAS_WINDOW, HAS_PAD,
                                HAS_SOFTCAP)
        tl.store(S + c, top_idx.to(tl.float32), mask=row_ok)
        c += 1
    if HAS_ENT:
        tl.store(S + c, ent_acc, mask=row_ok)


# ---------------------------------------------------------------------------------------------
# Combine kernel
# ---------------------------------------------------------------------------------------------


@triton.jit
def _column(stat, offs_c, c: tl.constexpr):
    """Column ``c`` of a [BLOCK_R, BLOCK_C] tile, as a [BLOCK_R] vector."""
    return tl.sum(tl.where(offs_c[None, :] == c, stat, 0.0), 1)


# The split count grows with the keys: not specialised, so that decoding never recompiles.
@triton.jit(do_not_specialize=["n_splits"])
def _decode_combine(
    PART_O, PART_S, Out, LSE, SINK, OFFS, PRB, IND, DUP, ENT, DIST, LOC, SPANM, TOP_I, TOP_P, LEARNED,
    SINK_LOGITS, n_rows, n_splits, Hq, Nq,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, N_COLS: tl.constexpr, BLOCK_C: tl.constexpr,
    N_OFFSETS: tl.constexpr, N_PROBES: tl.constexpr, HAS_TOK: tl.constexpr, HAS_ENT: tl.constexpr,
    HAS_DIST: tl.constexpr, HAS_LOCAL: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_TOP1: tl.constexpr,
    HAS_SINKS: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Merge the n_splits partials of BLOCK_R flat (batch, head, query) rows.

    One pass over the splits with the same re-centring as the key loop (a split is a "key" of
    weight l_s at score m_s); the result is the module docstring's two-pass formula. The top-1
    key is the one of the split with the largest max (ties: the earlier split); learned sinks
    join the log-sum-exp here, as in the fused kernel's epilogue."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rows < n_rows
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    c_ok = r_ok[:, None] & (offs_c[None, :] < N_COLS)
    E_COL: tl.constexpr = N_COLS - 1  # the entropy column, when HAS_ENT
    T_COL: tl.constexpr = N_COLS - 2 if HAS_ENT else N_COLS - 1  # the top-1 key column, when HAS_TOP1

    M = tl.full([BLOCK_R], NEG_BIG, dtype=tl.float32)
    L = tl.zeros([BLOCK_R], dtype=tl.float32)
    E = tl.zeros([BLOCK_R], dtype=tl.float32)
    T = tl.full([BLOCK_R], -1.0, dtype=tl.float32)
    acc_o = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    acc_c = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for s in range(0, n_splits):
        part = s * n_rows + rows
        S = PART_S + part * N_COLS
        m = tl.load(S, mask=r_ok, other=NEG_BIG)
        l = tl.load(S + 1, mask=r_ok, other=0.0)
        if HAS_TOP1:
            T = tl.where(m > M, tl.load(S + T_COL, mask=r_ok, other=-1.0), T)
        M_new = tl.maximum(M, m)
        a = tl.math.exp2(M - M_new)  # rescales what was merged so far
        w = tl.math.exp2(m - M_new)  # this split's weight
        if HAS_ENT:
            e = tl.load(S + E_COL, mask=r_ok, other=0.0)
            E = a * (E + L * (M - M_new)) + w * (e + l * (m - M_new))
        L = L * a + w * l
        x = tl.load(S[:, None] + offs_c[None, :], mask=c_ok, other=0.0)
        acc_c = acc_c * a[:, None] + w[:, None] * x
        o = tl.load(PART_O + part[:, None] * BLOCK_D + offs_d[None, :], mask=r_ok[:, None], other=0.0)
        acc_o = acc_o * a[:, None] + w[:, None] * o
        M = M_new

    # norm turns the merged sums of 2^(s2 - M) into probabilities: 1 / L, or 2^(M - lse2) when a
    # learned sink shares the mass. A row with no attendable key: output and statistics 0.
    has_key = L > 0
    L_safe = tl.where(has_key, L, 1.0)
    lse2 = M + tl.math.log2(L_safe)
    sink2 = 0.0
    if HAS_SINKS:
        h = (rows // Nq) % Hq
        sink2 = tl.load(SINK_LOGITS + h, mask=r_ok, other=0.0).to(tl.float32) * LOG2E_K
        lse2, norm = join_learned_sink(lse2, M, has_key, sink2)
    else:
        norm = 1.0 / L_safe
    stat = acc_c * norm[:, None]  # column c: sum_s w_s x_s * norm (columns m, l unused)

    out = acc_o * norm[:, None]
    tl.store(Out + rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=r_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    store_lse(LSE + rows, lse2, has_key, out, offs_d < HEAD_DIM, r_ok, HAS_SINKS)
    if HAS_SINKS:
        tl.store(LEARNED + rows, tl.math.exp2(sink2 - lse2), mask=r_ok)
    # Columns: 2 sink, then offsets, probes (one masked store each), induction, duplicate, ...
    tl.store(SINK + rows, _column(stat, offs_c, 2), mask=r_ok)
    if N_OFFSETS > 0:
        t = offs_c - 3
        tl.store(OFFS + rows[:, None] * N_OFFSETS + t[None, :], stat,
                 mask=r_ok[:, None] & ((t >= 0) & (t < N_OFFSETS))[None, :])
    if N_PROBES > 0:
        t = offs_c - (3 + N_OFFSETS)
        tl.store(PRB + rows[:, None] * N_PROBES + t[None, :], stat,
                 mask=r_ok[:, None] & ((t >= 0) & (t < N_PROBES))[None, :])
    c = 3 + N_OFFSETS + N_PROBES
    if HAS_TOK:
        tl.store(IND + rows, _column(stat, offs_c, c), mask=r_ok)
        tl.store(DUP + rows, _column(stat, offs_c, c + 1), mask=r_ok)
        c += 2
    if HAS_DIST:
        tl.store(DIST + rows, _column(stat, offs_c, c), mask=r_ok)
        c += 1
    if HAS_LOCAL:
        tl.store(LOC + rows, _column(stat, offs_c, c), mask=r_ok)
        c += 1
    if HAS_SPAN:
        tl.store(SPANM + rows, _column(stat, offs_c, c), mask=r_ok)
        c += 1
    if HAS_TOP1:
        tl.store(TOP_I + rows, tl.where(has_key, T, -1.0).to(tl.int64), mask=r_ok)
        tl.store(TOP_P + rows, tl.where(has_key, tl.math.exp2(M - lse2), 0.0), mask=r_ok)
    if HAS_ENT:
        tl.store(ENT + rows, row_entropy2(E, L, M, lse2, norm, sink2, HAS_SINKS) * LN2, mask=r_ok)


# ---------------------------------------------------------------------------------------------
# Autotuning (GPU) and launch
# ---------------------------------------------------------------------------------------------


# The kernels themselves, for ahead-of-time compilation (kernels.aot), and the autotuned split
# kernel (which key tiles a launch may try, and which one it runs: ``autotune``).
SPLIT_KERNEL = _decode_split_fwd
COMBINE_KERNEL = _decode_combine
SPLIT_TUNER = split_tuner(_decode_split_fwd)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def combine_rows_block(n_rows: int, sm_count: int) -> int:
    """Rows per combine program: 16 under the interpreter; on GPU a power of two up to 16 that
    still leaves ``PROGRAMS_PER_SM`` programs per SM (decode has few rows: usually 1)."""
    if interpreting():
        return 16
    per_program = max(1, n_rows // (PROGRAMS_PER_SM * sm_count))
    return min(16, 1 << (per_program.bit_length() - 1))


def combine_warps(constexprs: dict) -> int:
    """Warps for a combine program: one per 256 elements of its [BLOCK_R, BLOCK_D] tile, 1 to 4."""
    return max(1, min(4, constexprs["BLOCK_R"] * constexprs["BLOCK_D"] // 256))


def plan_split_len(batch: int, q_heads: int, kv_heads: int, n_queries: int, n_keys: int,
                   sm_count: int) -> Optional[int]:
    """Keys per split for a decode call, or None when splitting is not worthwhile.

    Worthwhile when ``n_queries <= DECODE_MAX_QUERIES``, the unsplit programs (one per KV-head
    row block) are too few to give every SM ``PROGRAMS_PER_SM`` of them, and the keys can be cut
    into at least two splits of ``MIN_SPLIT_KEYS``. The split length is a multiple of
    ``SPLIT_ALIGN``; at most ``MAX_SPLITS`` splits."""
    if n_queries > DECODE_MAX_QUERIES or n_keys < 2 * MIN_SPLIT_KEYS:
        return None
    group = q_heads // kv_heads
    base = batch * kv_heads * triton.cdiv(group * n_queries, ROWS_BLOCK)
    want = min(triton.cdiv(PROGRAMS_PER_SM * sm_count, base), n_keys // MIN_SPLIT_KEYS, MAX_SPLITS)
    if want < 2:
        return None
    split_len = triton.cdiv(triton.cdiv(n_keys, want), SPLIT_ALIGN) * SPLIT_ALIGN
    return split_len if triton.cdiv(n_keys, split_len) >= 2 else None


def device_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; ``NOMINAL_SM_COUNT`` for any other device."""
    if device.type != "cuda":
        return NOMINAL_SM_COUNT
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def decode_split_len(q: torch.Tensor, k: torch.Tensor) -> Optional[int]:
    """``plan_split_len`` for these tensors on their device."""
    B, Hq, Nq, _ = q.shape
    return plan_split_len(B, Hq, k.shape[1], Nq, k.shape[2], device_sm_count(q.device))


def partial_columns(flags: dict) -> int:
    """Columns of the partial-statistics buffer for a launch's ``StatsRequest.flags``: m, l, sink,
    offsets, probes, ind, dup, distance, local, span, top-1 key, entropy (those present)."""
    f = flags
    return (3 + f["N_OFFSETS"] + f["N_PROBES"] + 2 * int(f["HAS_TOK"]) + int(f["HAS_DIST"]) + int(f["HAS_LOCAL"])
            + int(f["HAS_SPAN"]) + int(f["HAS_TOP1"]) + int(f["HAS_ENT"]))


# The flags that follow from which optional tensors a launch passes (None when absent).
SPLIT_HEURISTICS = dict(N_OFFSETS=extent("OFFSET_VALUES", 0), N_PROBES=extent("PROBE_KEYS", 1), HAS_PAD=given("KPM"),
                        HAS_TOK=given("TOK"), HAS_SPAN=given("SPAN"))
COMBINE_HEURISTICS = dict(
    N_OFFSETS=extent("OFFS", 3), N_PROBES=extent("PRB", 3), HAS_TOK=given("IND"), HAS_ENT=given("ENT"),
    HAS_DIST=given("DIST"), HAS_LOCAL=given("LOC"), HAS_SPAN=given("SPANM"), HAS_TOP1=given("TOP_I"),
    HAS_SINKS=given("SINK_LOGITS"),
)


def split_kernel_args(q: Any, k: Any, v: Any, part_o: Any, part_s: Any, side: SideInputs, *, request: StatsRequest,
                      flags: dict, split_len: int, tensors: Any) -> tuple[dict, dict]:
    """Arguments of ``_decode_split_fwd`` by parameter name (None: an absent optional tensor) and
    its constexprs that do not follow from them (less BLOCK_N and the launch options), from tensors
    or shape-only stand-ins (``kernels.aot``): the one place that builds them, shared by the
    launcher and ahead-of-time compilation. ``flags``: ``request.flags(side)``; ``tensors``:
    ``triton_common.TorchTensors`` or its stand-in (its ``values``)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    qk_scale, cap_in = score_scales(request.scale, request.softcap)
    kpm = side.kernel_padding_mask()
    args = dict(
        Q=q, K=k, V=v, PART_O=part_o, PART_S=part_s, TOK=side.token_ids, TOKP=side.prev_token_ids, KPM=kpm,
        FIRST=side.first_key, OFFSET_VALUES=tensors.values(request.offsets) if request.offsets else None,
        PROBE_KEYS=side.probe_keys, SPAN=side.span.to(torch.int32) if side.span is not None else None,
        **stride_args(q, ("stride_qb", "stride_qh", "stride_qm", "stride_qd")),
        **stride_args(k, ("stride_kb", "stride_kh", "stride_kn", "stride_kd")),
        **stride_args(v, ("stride_vb", "stride_vh", "stride_vn", "stride_vd")),
        **stride_args(kpm, ("stride_mb", "stride_mn")),
        Hq=Hq, Hkv=Hkv, GROUP=Hq // Hkv, Nq=Nq, Nk=Nk, qk_scale=qk_scale, split_len=split_len, n_rows=B * Hq * Nq,
        cap_in=cap_in, window=request.window or 0, local_window=request.local_window or 0,
    )
    explicit = {name: val for name, val in kernel_flags(SPLIT_KERNEL, flags).items() if name not in SPLIT_HEURISTICS}
    constexprs = dict(HEAD_DIM=D, BLOCK_D=head_block(D), N_COLS=partial_columns(flags), **explicit,
                      DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", BLOCK_M=ROWS_BLOCK)
    return args, constexprs


def combine_kernel_args(part_o: Any, part_s: Any, out: Any, stats: AttentionStats, *, request: StatsRequest,
                        flags: dict, n_splits: int, block_r: int) -> tuple[dict, dict]:
    """Arguments of ``_decode_combine`` by name and its constexprs (see ``split_kernel_args``);
    ``stats`` holds the allocated outputs (statistics that are off are None)."""
    B, Hq, Nq, D = out.shape
    n_cols = partial_columns(flags)
    args = dict(PART_O=part_o, PART_S=part_s, Out=out, LSE=stats.lse, SINK=stats.sink, OFFS=stats.offsets,
                PRB=stats.probes, IND=stats.induction, DUP=stats.duplicate, ENT=stats.entropy, DIST=stats.distance,
                LOC=stats.local, SPANM=stats.span, TOP_I=stats.top1_index, TOP_P=stats.top1_prob,
                LEARNED=stats.learned_sink, SINK_LOGITS=request.sinks, n_rows=B * Hq * Nq, n_splits=n_splits, Hq=Hq,
                Nq=Nq)
    constexprs = dict(HEAD_DIM=D, BLOCK_D=head_block(D), N_COLS=n_cols, BLOCK_C=triton.next_power_of_2(n_cols),
                      BLOCK_R=block_r)
    return args, constexprs


def check_split_len(split_len: int, tile: Optional[int], head_dim: int, elt_bytes: int) -> None:
    """``ValueError`` unless ``split_len`` is a whole number of key tiles: of ``tile`` when one is
    fixed (forced, pinned, or the interpreter's), else of some config the autotuner would try
    (``autotune.split_candidates``: the tuner tries only the tiles that divide it)."""
    if tile is not None:
        if split_len <= 0 or split_len % tile:
            raise ValueError(split_len_error(split_len, (tile,)))
    elif not split_candidates(SPLIT_CONFIGS, block_d=head_block(head_dim), block_m=ROWS_BLOCK, elt_bytes=elt_bytes,
                              split_len=split_len):
        raise ValueError(split_len_error(split_len))


def attention_with_stats_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, request: StatsRequest,
                                side: SideInputs, split_len: Optional[int] = None, block_n: Optional[int] = None,
                                ) -> tuple[torch.Tensor, AttentionStats]:
    """Split-key launch: same contract and outputs as ``attention_with_stats_triton``.

    Inputs are assumed validated by ``attention_with_stats`` (shapes ``q [B, Hq, Nq, D]``,
    ``k, v [B, Hkv, Nk, D]``, any strides), with ``Nq <= DECODE_MAX_QUERIES``.

    Args:
        split_len: keys per split (a multiple of the key tile: the autotuner tries only the
            tiles that divide it); default ``decode_split_len``, or all keys in one split when
            splitting is not worthwhile.
        block_n: force the key tile (tests); otherwise a pinned config (``pinning``), else
            autotuned on GPU (``autotune``), else 16 under the interpreter.
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    if Nq > DECODE_MAX_QUERIES:
        raise ValueError(f"q length must be <= {DECODE_MAX_QUERIES} for the decode kernel, got {Nq}")
    if request.top1 and Nk > 1 << 24:  # the partials carry the top-1 key as a float32
        raise ValueError(f"top1 in the decode kernel needs k_len <= 2**24, got {Nk}")
    pinned = None if block_n else split_pin(head_dim=D, block_m=ROWS_BLOCK, elt_bytes=q.element_size(),
                                          smem_limit=device_smem_limit(q.device))
    if block_n is None and pinned is None and interpreting():
        block_n = INTERPRET_BLOCK_N
    if split_len is None:
        split_len = decode_split_len(q, k) or triton.cdiv(Nk, SPLIT_ALIGN) * SPLIT_ALIGN
    check_split_len(split_len, block_n or (pinned.kwargs["BLOCK_N"] if pinned else None), D, q.element_size())
    n_splits = triton.cdiv(Nk, split_len)
    grid = (n_splits, triton.cdiv((Hq // Hkv) * Nq, ROWS_BLOCK), B * Hkv)
    check_grid(grid, "split-decode", ("key splits", "row blocks", "batch x kv heads"))

    dev, f32 = q.device, torch.float32
    if request.sinks is not None:
        request = dataclasses.replace(request, sinks=request.sinks.to(f32).contiguous())
    flags = request.flags(side)
    R = B * Hq * Nq
    part_o = torch.empty(n_splits, R, head_block(D), dtype=f32, device=dev)
    part_s = torch.empty(n_splits, R, partial_columns(flags), dtype=f32, device=dev)
    out = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=dev)
    stats = request.allocate((B, Hq, Nq), side, torch_allocator(dev))

    args, constexprs = split_kernel_args(q, k, v, part_o, part_s, side, request=request, flags=flags,
                                         split_len=split_len, tensors=TorchTensors(dev))
    cargs, cconst = combine_kernel_args(part_o, part_s, out, stats, request=request, flags=flags, n_splits=n_splits,
                                        block_r=combine_rows_block(R, device_sm_count(dev)))
    split_kernel = _decode_split_fwd if block_n is not None or pinned is not None else SPLIT_TUNER
    split_tile = ({"BLOCK_N": block_n} if block_n is not None else pinned.all_kwargs() if pinned is not None
                  else split_tuning_keywords(Nq, Nk, split_len))
    with device_guard(dev):  # Triton launches on the current device: make it q's
        # triton.heuristics derives the flags first, so that they reach the tuner's key
        triton.heuristics(SPLIT_HEURISTICS)(split_kernel)[grid](**args, **constexprs, **split_tile)
        triton.heuristics(COMBINE_HEURISTICS)(_decode_combine)[(triton.cdiv(R, cconst["BLOCK_R"]),)](
            **cargs, **cconst, num_warps=combine_warps(cconst))
    return out, stats
