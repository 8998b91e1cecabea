"""Token-match induction and duplicate mass out of the fused kernel's hot loop: a token-sorted
band kernel run after the main pass (issue 23).

Definitions (``AttentionStats``): the duplicate mass of query ``i`` is ``sum p_ij`` over keys
``j < i`` with ``tok[j] == tok[i]``; the induction mass is ``sum p_ij`` over keys ``j <= i`` whose
attendable predecessor holds the query token (``prev_tok[j] == tok[i]``). Testing every ``(i, j)``
in the fused loop costs an integer compare and a select-add per score for each. Instead:

* per sequence, the keys are sorted by ``(token, position)`` (duplicates) and by ``(previous
  token, position)`` (induction), in torch on the device (:func:`token_bands`), once per
  ``SideInputs`` (every layer of a forward shares them). Padded keys get the token -1, which
  matches no query; so do keys whose predecessor is padded or absent
  (``SideInputs.prev_token_ids``). Each query's matches are then one interval of each sorted
  list (``torch.searchsorted``: its token, from the first key its window reaches to ``j < i``
  resp. ``j <= i``); the keys in no query's interval (e.g. each token's last occurrence) are
  dropped from the lists and the intervals renumbered (:func:`compact_keys`). The queries are
  sorted by ``(token, position)``, those with no match (first occurrences) last, so that a block
  of ``BLOCK_M`` of them matches one short run of each list (the union of its rows' intervals);
* :func:`_token_match_band`, one program per (sorted query block, batch * query head), walks
  that run in tiles of gathered keys, recomputes the scores as the main kernels do (scale,
  softcap), turns them into probabilities with the row's log-sum-exp from the main pass (``p =
  2^(s2 - lse2)``: no online softmax; a learned sink is already inside ``lse``), keeps the places
  inside each row's interval (one unsigned compare per score: token, causality, window and
  padding are all in the interval) and scatters the row sums back to the original query order.
  The tiles inside every row's interval (a frequent token's block, below its diagonal) run in a
  second loop without the mask, in wider tiles (``BLOCK_N_FULL``).

:func:`attention_with_stats_fused` is the fused (prefill) path: the main kernel without token
matching, then the band kernel. ``TOKEN_MATCH`` chooses the in-loop matching instead (tests,
benchmarks); the split-key decode kernel keeps its in-loop matching.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .request import StatsRequest
from .side_inputs import SideInputs
from .stats import AttentionStats
from .triton_attention import attention_with_stats_triton
from .triton_common import (LOG2E_K, device_guard, head_block, interpreting, program_heads, score_scales,
                            tanh_softcap)

TOKEN_MATCH_MODES = ("band", "loop")
# How the fused (prefill) path computes induction / duplicate mass: "band" (this module's kernel
# after the main pass) or "loop" (inside the main kernel's key loop, as before).
TOKEN_MATCH = "band"

# Tiles of the band kernel: (BLOCK_M sorted queries, BLOCK_N gathered keys), warps, stages. Chosen
# by bench.band_report's static end-to-end estimate (sm_90, Triton 3.9 and 3.6): 16- and 32-row
# blocks (mma.sync) compute fewer band scores but cost more per score; 64 is the smallest wgmma M.
# One stage: the pipeliner's per-element predicates cost more than the prefetch saves here.
BAND_BLOCK = (64, 32, 128)  # (BLOCK_M, BLOCK_N masked tiles, BLOCK_N_FULL unmasked tiles)
BAND_WARPS = 4
BAND_STAGES = 1
INTERPRET_BAND_BLOCK = (16, 16, 32)  # under TRITON_INTERPRET=1 programs run serially on the CPU
ORDER_PAD = 128  # filler keys after each sorted key list: BLOCK_N, BLOCK_N_FULL <= ORDER_PAD


def band_config(block_n: Optional[int] = None) -> triton.Config:
    """The band kernel's launch config: ``BLOCK_N`` keys per masked tile (``BLOCK_M`` is fixed by
    the ``TokenBands`` layout, ``BLOCK_N_FULL`` by ``band_launch_arguments``)."""
    return triton.Config({"BLOCK_N": block_n or BAND_BLOCK[1]}, num_warps=BAND_WARPS, num_stages=BAND_STAGES)


def check_band_tile(block_n: int, block_n_full: int) -> None:
    """``BLOCK_N_FULL`` must be a multiple of ``BLOCK_N``, both at most ``ORDER_PAD``."""
    if block_n_full % block_n or max(block_n, block_n_full) > ORDER_PAD:
        raise ValueError(f"band tile: BLOCK_N_FULL={block_n_full} must be a multiple of BLOCK_N={block_n}, "
                         f"both <= ORDER_PAD={ORDER_PAD}")


@triton.jit
def _band_tile(q, lo, width, lse2, Kb, ORDER, start, stride_kn, stride_kd, qk_scale, cap_in,
               MASKED: tl.constexpr, FP32_INPUT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_N: tl.constexpr, HAS_SOFTCAP: tl.constexpr, OFFSETS_32: tl.constexpr):
    """Per row, ``sum p_ij`` over the ``BLOCK_N`` keys ``j = ORDER[s]``, ``s = start ..``, that lie
    in the row's interval ``[lo, lo + width)`` (``MASKED``; else the whole tile lies in every
    row's interval)."""
    offs = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    key = tl.load(ORDER + offs)  # past the list's end: fillers (key 0), in no row's interval
    # Gathered key rows [BLOCK_N, BLOCK_D] (each row contiguous in memory: vector loads).
    if OFFSETS_32:  # every key row of this (batch, kv head) within 2^31 elements of Kb
        k_ptrs = Kb + (key[:, None] * stride_kn + offs_d[None, :] * stride_kd)
    else:
        k_ptrs = Kb + key[:, None].to(tl.int64) * stride_kn + offs_d[None, :] * stride_kd
    if BLOCK_D != HEAD_DIM:  # padded head dims: zeros on chip, no HBM traffic
        k = tl.load(k_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        k = tl.load(k_ptrs)
    if FP32_INPUT:
        s = tl.dot(q, tl.trans(k), input_precision="tf32x3")
    else:
        s = tl.dot(q, tl.trans(k))
    if HAS_SOFTCAP:
        s = tanh_softcap(s, cap_in, FP32_INPUT)
    s2 = s * qk_scale - lse2[:, None]
    if MASKED:  # lo <= s < lo + width as one unsigned compare
        s2 = tl.where((offs[None, :] - lo[:, None]).to(tl.uint32) < width[:, None], s2, float("-inf"))
    return tl.sum(tl.math.exp2(s2), 1)


@triton.jit
def _band_mass(q, lo, hi, lse2, Kb, ORDER, run_lo, run_hi, stride_kn, stride_kd, qk_scale, cap_in,
               FP32_INPUT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_N_FULL: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               OFFSETS_32: tl.constexpr):
    """Per row, ``sum p_ij`` over the keys ``j = ORDER[s]`` at the places ``s`` in the row's own
    interval ``[lo, hi)`` of the key list, walking the block's run ``[run_lo, run_hi)`` in tiles
    of gathered keys. The interval holds exactly the row's matches (token, causality, window and
    padding are in it), so no key token or position is read here. The tiles of ``BLOCK_N_FULL``
    keys inside every row's interval (``[max lo, min hi)``: a frequent token's block) skip the
    mask; the others are masked tiles of ``BLOCK_N`` keys (fewer predicates live at once). ``q``:
    ``[BLOCK_M, BLOCK_D]`` gathered queries; ``lse2``: their log-sum-exp in log2 units."""
    width = (hi - lo).to(tl.uint32)
    # Full tiles of BLOCK_N_FULL keys inside [max lo, min hi), from run_lo: places [f0, f1)
    first_full = tl.cdiv(tl.maximum(tl.max(lo, 0) - run_lo, 0), BLOCK_N_FULL)
    n_full = tl.maximum(tl.maximum(tl.min(hi, 0) - run_lo, 0) // BLOCK_N_FULL - first_full, 0)
    f0 = tl.where(n_full > 0, run_lo + first_full * BLOCK_N_FULL, run_lo)  # none: all masked, from run_lo
    f1 = f0 + n_full * BLOCK_N_FULL
    mass = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(f0, f1, BLOCK_N_FULL):
        mass += _band_tile(q, lo, width, lse2, Kb, ORDER, start, stride_kn, stride_kd, qk_scale, cap_in, False,
                           FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_N_FULL, HAS_SOFTCAP, OFFSETS_32)
    # The rest in masked tiles of BLOCK_N (which divides BLOCK_N_FULL): [run_lo, f0), [f1, run_hi)
    n_before = (f0 - run_lo) // BLOCK_N
    n_masked = n_before + tl.cdiv(tl.maximum(run_hi - f1, 0), BLOCK_N)
    for t in range(0, n_masked):
        start = tl.where(t < n_before, run_lo + t * BLOCK_N, f1 + (t - n_before) * BLOCK_N)
        mass += _band_tile(q, lo, width, lse2, Kb, ORDER, start, stride_kn, stride_kd, qk_scale, cap_in, True,
                           FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_N, HAS_SOFTCAP, OFFSETS_32)
    return mass


@triton.jit
def _token_match_band(
    Q, K, LSE, IND, DUP, Q_ORDER, INTERVALS, DUP_ORDER, IND_ORDER, RANGES,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    Hq, GROUP, Nq, order_len, n_blocks, qk_scale, cap_in,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, FP32_INPUT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, OFFSETS_32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N_FULL: tl.constexpr,
):
    """One program: ``BLOCK_M`` token-sorted queries of one (batch, query head). ``INTERVALS[b,
    r]`` holds sorted row ``r``'s key intervals ``[dup_lo, dup_hi, ind_lo, ind_hi)``,
    ``RANGES[b, blk]`` the block's runs (their union) in the same form."""
    blk = tl.program_id(0)
    bh, b, h, kvh = program_heads(Hq, GROUP)
    Kb = K + b * stride_kb + kvh * stride_kh

    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Nq
    qi = tl.load(Q_ORDER + b * Nq + rows, mask=row_ok, other=0)  # the rows' original query indices
    iv = INTERVALS + (b * Nq + rows) * 4
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + qi[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    stat = bh * Nq + qi  # flat index into the contiguous [B, Hq, Nq] statistics
    lse2 = tl.load(LSE + stat, mask=row_ok, other=0.0) * LOG2E_K
    # A row with no attendable key (lse -inf: every score -inf) gets mass 0, as in the main kernel:
    # +inf here makes 2^(s2 - lse2) = 0 for its -inf scores, where -inf - -inf would give NaN.
    lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)

    rng = RANGES + (b * n_blocks + blk) * 4
    dup = _band_mass(q, tl.load(iv, mask=row_ok, other=0), tl.load(iv + 1, mask=row_ok, other=0), lse2, Kb,
                     DUP_ORDER + b * order_len, tl.load(rng), tl.load(rng + 1), stride_kn, stride_kd, qk_scale, cap_in,
                     FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, BLOCK_N_FULL, HAS_SOFTCAP, OFFSETS_32)
    tl.store(DUP + stat, dup, mask=row_ok)
    ind = _band_mass(q, tl.load(iv + 2, mask=row_ok, other=0), tl.load(iv + 3, mask=row_ok, other=0), lse2, Kb,
                     IND_ORDER + b * order_len, tl.load(rng + 2), tl.load(rng + 3), stride_kn, stride_kd, qk_scale, cap_in,
                     FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, BLOCK_N_FULL, HAS_SOFTCAP, OFFSETS_32)
    tl.store(IND + stat, ind, mask=row_ok)


# The band kernel itself, for ahead-of-time compilation (kernels.aot).
BAND_KERNEL = _token_match_band


# ----------------------------------------------------------------------------------------------
# Host side: the sorted orders and each query block's key runs.

@dataclass(frozen=True)
class TokenBands:
    """The token-sorted layout of one batch of sequences for query blocks of ``block_m`` rows.

    ``q_order [B, Nq]`` int32: query indices, the rows with a possible match first, each part
    sorted by (token, position); ``intervals [B, Nq, 4]`` int32: per sorted row its matches as
    intervals ``[dup_lo, dup_hi)`` of ``dup_order`` and ``[ind_lo, ind_hi)`` of ``ind_order``;
    ``dup_order``/``ind_order [B, Nk + ORDER_PAD]`` int32: the keys some row matches, sorted by
    (token, position) resp. (previous token, position), then fillers (key 0, in no interval: a
    key tile past the end loads them unmasked);
    ``ranges [B, n_blocks, 4]`` int32: per query block the union of its rows' intervals, as
    ``[dup_lo, dup_hi, ind_lo, ind_hi)`` (empty: ``lo == hi``)."""

    block_m: int
    q_order: torch.Tensor
    intervals: torch.Tensor
    dup_order: torch.Tensor
    ind_order: torch.Tensor
    ranges: torch.Tensor

    @property
    def n_blocks(self) -> int:
        return self.ranges.shape[1]


def sort_by_token(tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row of ``tok [B, N]`` (ids >= -1) by (token, position): ``(sorted composite
    keys token * N + position, order)``, both ``[B, N]`` int64."""
    n = tok.shape[1]
    return (tok.long() * n + torch.arange(n, device=tok.device)).sort(-1)


def block_extremes(x: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block of ``block_m`` columns of ``x [B, N]`` (the last one ragged): ``(min, max)``,
    each ``[B, cdiv(N, block_m)]``."""
    n = x.shape[1]
    n_blocks = triton.cdiv(n, block_m)
    cols = torch.arange(n_blocks * block_m, device=x.device).clamp(max=n - 1)  # repeat the last column
    blocks = x[:, cols].view(x.shape[0], n_blocks, block_m)
    return blocks.amin(-1), blocks.amax(-1)


def compact_keys(order: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Drop from the sorted keys ``order [B, Nk]`` those in no interval ``[lo, hi)`` (``[B, Nq]``,
    ``lo <= hi``): ``(kept keys then fillers 0 [B, Nk + ORDER_PAD] int32, lo, hi in the kept
    list)``."""
    B, Nk = order.shape
    diff = torch.zeros(B, Nk + 1, dtype=torch.int32, device=order.device)
    ones = torch.ones_like(lo, dtype=torch.int32)
    diff.scatter_add_(1, lo, ones).scatter_add_(1, hi, -ones)
    covered = diff.cumsum(1)[:, :Nk] > 0
    before = torch.zeros(B, Nk + 1, dtype=torch.long, device=order.device)  # kept keys before each place
    before[:, 1:] = covered.cumsum(1)
    dest = torch.where(covered, before[:, :Nk], Nk + ORDER_PAD)  # dropped keys: a column cut off below
    kept = torch.zeros(B, Nk + ORDER_PAD + 1, dtype=order.dtype, device=order.device).scatter_(1, dest, order)
    kept = kept[:, :Nk + ORDER_PAD]
    return kept.to(torch.int32), before.gather(1, lo), before.gather(1, hi)


def block_runs(lo: torch.Tensor, hi: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block of ``block_m`` rows, the union ``[min lo, max hi)`` of the rows' non-empty
    intervals (``[B, Nq]`` each), ``lo == hi == 0`` where all are empty."""
    empty = hi <= lo
    run_lo, _ = block_extremes(torch.where(empty, torch.iinfo(lo.dtype).max, lo), block_m)
    _, run_hi = block_extremes(torch.where(empty, 0, hi), block_m)
    none = run_hi == 0
    return torch.where(none, 0, run_lo), run_hi


def token_bands(side: SideInputs, q_len: int, block_m: int, window: Optional[int] = None) -> TokenBands:
    """Sort ``side``'s queries (the last ``q_len`` keys) and keys by token, find each query's
    matching keys as intervals of the sorted keys and each query block's runs (``TokenBands``).
    ``window``: the sliding window, which trims the intervals."""
    tok, prev = side.token_ids, side.prev_token_ids
    if tok is None:
        raise ValueError("token_bands needs side inputs built with token_ids")
    Nk = tok.shape[1]
    if side.key_padding_mask is not None:  # a padded key matches nothing
        tok_keys = torch.where(side.key_padding_mask, tok, -1)
        prev = torch.where(side.key_padding_mask, prev, -1)
    else:
        tok_keys = tok
    q_tok = tok[:, Nk - q_len:].long()
    q_pos = torch.arange(Nk - q_len, Nk, device=tok.device).expand_as(q_tok)
    first = (q_pos - window + 1).clamp(min=0) if window is not None else torch.zeros_like(q_pos)
    intervals = []
    for keys, inclusive in ((tok_keys, False), (prev, True)):  # duplicates: j < i; induction: j <= i
        composite, order = sort_by_token(keys)
        lo = torch.searchsorted(composite, q_tok * Nk + first)
        hi = torch.maximum(torch.searchsorted(composite, q_tok * Nk + q_pos, right=inclusive), lo)
        intervals.append(compact_keys(order, lo, hi))
    (dup_order, dup_lo, dup_hi), (ind_order, ind_lo, ind_hi) = intervals
    idle = ((dup_hi == dup_lo) & (ind_hi == ind_lo)).long()  # rows with no possible match go last
    _, q_order = ((idle * (q_tok.amax() + 1) + q_tok) * q_len + q_pos - (Nk - q_len)).sort(-1)
    rows = torch.stack([dup_lo, dup_hi, ind_lo, ind_hi], -1).gather(1, q_order[..., None].expand(-1, -1, 4))
    ranges = torch.stack([*block_runs(rows[..., 0], rows[..., 1], block_m),
                          *block_runs(rows[..., 2], rows[..., 3], block_m)], -1)
    return TokenBands(block_m=block_m, q_order=q_order.to(torch.int32), intervals=rows.to(torch.int32).contiguous(),
                      dup_order=dup_order, ind_order=ind_order, ranges=ranges.to(torch.int32).contiguous())


def band_launch_arguments(q, k, lse, induction, duplicate, bands: TokenBands, request: StatsRequest,
                          block_n_full: Optional[int] = None) -> tuple[tuple, dict]:
    """``(args, constexprs)`` of one launch of the band kernel; the grid is
    ``(bands.n_blocks, B * Hq)`` and the tile ``BLOCK_M = bands.block_m``, ``BLOCK_N_FULL =
    block_n_full`` (default ``BAND_BLOCK[2]``; ``BLOCK_N``: ``band_config``)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    qk_scale, cap_in = score_scales(request.scale, request.softcap)
    args = (q, k, lse, induction, duplicate, bands.q_order, bands.intervals, bands.dup_order, bands.ind_order,
            bands.ranges, *q.stride(), *k.stride(), Hq, Hq // Hkv, Nq, bands.dup_order.shape[1], bands.n_blocks, qk_scale, cap_in)
    constexprs = dict(HEAD_DIM=D, BLOCK_D=head_block(D), FP32_INPUT=q.dtype == torch.float32,
                      HAS_SOFTCAP=request.softcap is not None,
                      OFFSETS_32=(Nk - 1) * k.stride()[2] + (D - 1) * k.stride()[3] < 2 ** 31, BLOCK_M=bands.block_m,
                      BLOCK_N_FULL=block_n_full or BAND_BLOCK[2])
    return args, constexprs


def token_match_band(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, request: StatsRequest, side: SideInputs,
                     block: Optional[tuple[int, int, int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction and duplicate mass ``([B, Hq, Nq], [B, Hq, Nq])`` float32 from the main pass's
    ``lse [B, Hq, Nq]`` (contiguous, nats, learned sinks included). ``q [B, Hq, Nq, D]``,
    ``k [B, Hkv, Nk, D]``; ``side`` carries the token ids. ``block=(BLOCK_M, BLOCK_N,
    BLOCK_N_FULL)`` forces a tile (tests)."""
    B, Hq, Nq, _ = q.shape
    block_m, block_n, block_n_full = block or (INTERPRET_BAND_BLOCK if interpreting() else BAND_BLOCK)
    check_band_tile(block_n, block_n_full)  # before the sorts
    # The sorts depend on the tokens, the query count, the tile and the window only: every layer of
    # a forward (one SideInputs) with the same window reuses them.
    bands = side.derived_once(("token_bands", Nq, block_m, request.window),
                              lambda: token_bands(side, Nq, block_m, request.window))
    induction = torch.empty((B, Hq, Nq), dtype=torch.float32, device=q.device)
    duplicate = torch.empty((B, Hq, Nq), dtype=torch.float32, device=q.device)
    args, constexprs = band_launch_arguments(q, k, lse, induction, duplicate, bands, request, block_n_full)
    with device_guard(q.device):
        _token_match_band[(bands.n_blocks, B * Hq)](*args, **constexprs, **band_config(block_n).all_kwargs())
    return induction, duplicate


def attention_with_stats_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, request: StatsRequest,
                               side: SideInputs, token_match: Optional[str] = None,
                               block: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, AttentionStats]:
    """The fused (prefill) path: ``attention_with_stats_triton``, with token matching either in
    its key loop (``token_match="loop"``) or out of it, by the band kernel after the main pass
    (``"band"``); default ``TOKEN_MATCH``. ``block`` forces the main kernel's tile."""
    mode = TOKEN_MATCH if token_match is None else token_match
    if mode not in TOKEN_MATCH_MODES:
        raise ValueError(f"token_match must be one of {TOKEN_MATCH_MODES}, got {mode!r}")
    if side.token_ids is None or mode == "loop":
        return attention_with_stats_triton(q, k, v, request, side, block=block)
    plain = dataclasses.replace(side, token_ids=None, prev_token_ids=None)  # HAS_TOK=False in the main kernel
    out, stats = attention_with_stats_triton(q, k, v, request, plain, block=block)
    stats.induction, stats.duplicate = token_match_band(q, k, stats.lse, request, side)
    return out, stats
