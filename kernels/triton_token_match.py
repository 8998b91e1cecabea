"""Token-match induction and duplicate mass out of the fused kernel's hot loop: a token-sorted
band kernel run after the main pass (issue 23).

Definitions (``AttentionStats``): the duplicate mass of query ``i`` is ``sum p_ij`` over keys
``j < i`` with ``tok[j] == tok[i]``; the induction mass is ``sum p_ij`` over keys ``j <= i`` whose
attendable predecessor holds the query token (``prev_tok[j] == tok[i]``). Testing every ``(i, j)``
in the fused loop costs an integer compare and a select-add per score for each. Instead:

* per sequence, the queries are sorted by ``(token, position)`` and the keys by ``(token,
  position)`` (duplicates) and by ``(previous token, position)`` (induction), in torch on the
  device (:func:`token_bands`), once per ``SideInputs`` (every layer of a forward shares them). Padded keys get the token -1, which matches no query; so do keys
  whose predecessor is padded or absent (``SideInputs.prev_token_ids``). Matches then form a
  block diagonal: a block of ``BLOCK_M`` sorted queries with tokens in ``[t_lo, t_hi]`` can only
  match the contiguous run of sorted keys with ``(token, position)`` between ``(t_lo, first key
  any row of the block may attend)`` and ``(t_hi, last such key)`` (``torch.searchsorted``);
* :func:`_token_match_band`, one program per (sorted query block, batch * query head), walks
  that run in tiles of ``BLOCK_N`` gathered keys, recomputes the scores as the main kernels do
  (scale, softcap, sliding window, causality), turns them into probabilities with the row's
  log-sum-exp from the main pass (``p = 2^(s2 - lse2)``: no online softmax; a learned sink is
  already inside ``lse``), keeps the exact matches and scatters the row sums back to the
  original query order.

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

# Tiles of the band kernel: (BLOCK_M sorted queries, BLOCK_N gathered keys), warps, stages. Smaller
# query blocks give narrower bands (fewer tokens per block); 64 is the smallest wgmma M.
BAND_BLOCK = (64, 64)
BAND_WARPS = 4
BAND_STAGES = 2
INTERPRET_BAND_BLOCK = (16, 16)  # under TRITON_INTERPRET=1 programs run serially on the CPU


def band_config(block_n: int = BAND_BLOCK[1]) -> triton.Config:
    """The band kernel's launch config (``BLOCK_M`` is fixed by the ``TokenBands`` layout)."""
    return triton.Config({"BLOCK_N": block_n}, num_warps=BAND_WARPS, num_stages=BAND_STAGES)


@triton.jit
def _band_mass(q, q_tok, q_pos, lse2, Kb, ORDER, TOKS, lo, hi, stride_kn, stride_kd, qk_scale, cap_in, window,
               INCLUSIVE: tl.constexpr, FP32_INPUT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               OFFSETS_32: tl.constexpr):
    """Per row, ``sum p_ij`` over the sorted keys ``[lo, hi)`` whose token (``TOKS``) equals the
    row's token ``q_tok`` and whose position ``j = ORDER[.]`` the row attends: ``j <= i``
    (``INCLUSIVE``, induction) or ``j < i`` (duplicates), inside the sliding window. ``q``:
    ``[BLOCK_M, BLOCK_D]`` gathered queries; ``lse2``: their log-sum-exp in log2 units."""
    offs_j = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    mass = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs = start + offs_j
        in_range = offs < hi
        key = tl.load(ORDER + offs, mask=in_range, other=0)
        k_tok = tl.load(TOKS + offs, mask=in_range, other=-1)
        # Gathered key rows [BLOCK_N, BLOCK_D] (each row contiguous in memory: vector loads).
        if OFFSETS_32:  # every key row of this (batch, kv head) within 2^31 elements of Kb
            k_ptrs = Kb + (key[:, None] * stride_kn + offs_d[None, :] * stride_kd)
        else:
            k_ptrs = Kb + key[:, None].to(tl.int64) * stride_kn + offs_d[None, :] * stride_kd
        if BLOCK_D != HEAD_DIM:  # padded head dims: zeros on chip, no HBM traffic
            k = tl.load(k_ptrs, mask=in_range[:, None] & d_ok[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs, mask=in_range[:, None], other=0.0)
        if FP32_INPUT:
            s = tl.dot(q, tl.trans(k), input_precision="tf32x3")
        else:
            s = tl.dot(q, tl.trans(k))
        if HAS_SOFTCAP:
            s = tanh_softcap(s, cap_in)
        keep = k_tok[None, :] == q_tok[:, None]  # out-of-range keys hold -1, rows off the end -2
        if INCLUSIVE:
            keep = keep & (key[None, :] <= q_pos[:, None])
        else:
            keep = keep & (key[None, :] < q_pos[:, None])
        if HAS_WINDOW:  # transformers' sliding window: i - window < j <= i
            keep = keep & (key[None, :] > q_pos[:, None] - window)
        p = tl.math.exp2(tl.where(keep, s * qk_scale - lse2[:, None], float("-inf")))
        mass += tl.sum(p, 1)
    return mass


@triton.jit
def _token_match_band(
    Q, K, LSE, IND, DUP, Q_ORDER, Q_TOK, DUP_ORDER, DUP_TOK, IND_ORDER, IND_TOK, RANGES,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    Hq, GROUP, Nq, Nk, n_blocks, qk_scale, cap_in, window,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, FP32_INPUT: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, OFFSETS_32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: ``BLOCK_M`` token-sorted queries of one (batch, query head). ``RANGES[b, blk]``
    holds the sorted-key runs ``[dup_lo, dup_hi, ind_lo, ind_hi)`` of the block."""
    blk = tl.program_id(0)
    bh, b, h, kvh = program_heads(Hq, GROUP)
    Kb = K + b * stride_kb + kvh * stride_kh

    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Nq
    qi = tl.load(Q_ORDER + b * Nq + rows, mask=row_ok, other=0)  # the rows' original query indices
    q_tok = tl.load(Q_TOK + b * Nq + rows, mask=row_ok, other=-2)
    q_pos = (Nk - Nq) + qi  # bottom-right causal alignment
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + qi[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    stat = bh * Nq + qi  # flat index into the contiguous [B, Hq, Nq] statistics
    lse2 = tl.load(LSE + stat, mask=row_ok, other=0.0) * LOG2E_K
    # A row with no attendable key (lse -inf: every score -inf) gets mass 0, as in the main kernel:
    # +inf here makes 2^(s2 - lse2) = 0 for its -inf scores, where -inf - -inf would give NaN.
    lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)

    rng = RANGES + (b * n_blocks + blk) * 4
    dup = _band_mass(q, q_tok, q_pos, lse2, Kb, DUP_ORDER + b * Nk, DUP_TOK + b * Nk, tl.load(rng), tl.load(rng + 1),
                     stride_kn, stride_kd, qk_scale, cap_in, window,
                     False, FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_WINDOW, HAS_SOFTCAP, OFFSETS_32)
    tl.store(DUP + stat, dup, mask=row_ok)
    ind = _band_mass(q, q_tok, q_pos, lse2, Kb, IND_ORDER + b * Nk, IND_TOK + b * Nk, tl.load(rng + 2),
                     tl.load(rng + 3), stride_kn, stride_kd, qk_scale, cap_in, window,
                     True, FP32_INPUT, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_WINDOW, HAS_SOFTCAP, OFFSETS_32)
    tl.store(IND + stat, ind, mask=row_ok)


# The band kernel itself, for ahead-of-time compilation (kernels.aot).
BAND_KERNEL = _token_match_band


# ----------------------------------------------------------------------------------------------
# Host side: the sorted orders and each query block's key runs.

@dataclass(frozen=True)
class TokenBands:
    """The token-sorted layout of one batch of sequences for query blocks of ``block_m`` rows.

    ``q_order``/``q_tok [B, Nq]`` int32: query indices sorted by (token, position) and their
    tokens; ``dup_order``/``dup_tok [B, Nk]``: keys sorted by (token, position), tokens (-1 on
    padded keys); ``ind_order``/``ind_tok [B, Nk]``: keys sorted by (previous token, position);
    ``ranges [B, n_blocks, 4]`` int32: per query block the sorted-key runs ``[dup_lo, dup_hi)``
    and ``[ind_lo, ind_hi)`` that hold every match of its rows."""

    block_m: int
    q_order: torch.Tensor
    q_tok: torch.Tensor
    dup_order: torch.Tensor
    dup_tok: torch.Tensor
    ind_order: torch.Tensor
    ind_tok: torch.Tensor
    ranges: torch.Tensor

    @property
    def n_blocks(self) -> int:
        return self.ranges.shape[1]


def sort_by_token(tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort each row of ``tok [B, N]`` (ids >= -1) by (token, position): ``(sorted composite
    keys token * N + position [B, N] int64, order [B, N] int32, sorted tokens [B, N] int32)``."""
    n = tok.shape[1]
    composite, order = (tok.long() * n + torch.arange(n, device=tok.device)).sort(-1)
    return composite, order.to(torch.int32), tok.gather(-1, order).to(torch.int32)


def block_extremes(x: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block of ``block_m`` columns of ``x [B, N]`` (the last one ragged): ``(min, max)``,
    each ``[B, cdiv(N, block_m)]``."""
    n = x.shape[1]
    n_blocks = triton.cdiv(n, block_m)
    cols = torch.arange(n_blocks * block_m, device=x.device).clamp(max=n - 1)  # repeat the last column
    blocks = x[:, cols].view(x.shape[0], n_blocks, block_m)
    return blocks.amin(-1), blocks.amax(-1)


def token_bands(side: SideInputs, q_len: int, block_m: int, window: Optional[int] = None) -> TokenBands:
    """Sort ``side``'s queries (the last ``q_len`` keys) and keys by token and find each query
    block's key runs (``TokenBands``). ``window``: the sliding window, which trims the runs."""
    tok, prev = side.token_ids, side.prev_token_ids
    if tok is None:
        raise ValueError("token_bands needs side inputs built with token_ids")
    Nk = tok.shape[1]
    if side.key_padding_mask is not None:  # a padded key matches nothing
        tok_keys = torch.where(side.key_padding_mask, tok, -1)
        prev = torch.where(side.key_padding_mask, prev, -1)
    else:
        tok_keys = tok
    _, q_order, q_tok = sort_by_token(tok[:, Nk - q_len:])
    dup_keys, dup_order, dup_tok = sort_by_token(tok_keys)
    ind_keys, ind_order, ind_tok = sort_by_token(prev)

    t_lo, t_hi = block_extremes(q_tok, block_m)  # sorted: first and last of each block
    pos_lo, pos_hi = block_extremes(q_order.long() + (Nk - q_len), block_m)
    first = pos_lo - window + 1 if window is not None else torch.zeros_like(pos_lo)
    lo_key = t_lo.long() * Nk + first.clamp(min=0)  # the first key any row of the block may attend

    def run(keys: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.searchsorted(keys, lo_key)
        hi = torch.searchsorted(keys, t_hi.long() * Nk + last, right=True)
        return lo, torch.maximum(hi, lo)

    ranges = torch.stack([*run(dup_keys, pos_hi - 1), *run(ind_keys, pos_hi)], -1)  # dup: j < i; induction: j <= i
    return TokenBands(block_m=block_m, q_order=q_order, q_tok=q_tok, dup_order=dup_order, dup_tok=dup_tok,
                      ind_order=ind_order, ind_tok=ind_tok, ranges=ranges.to(torch.int32).contiguous())


def band_launch_arguments(q, k, lse, induction, duplicate, bands: TokenBands,
                          request: StatsRequest) -> tuple[tuple, dict]:
    """``(args, constexprs)`` of one launch of the band kernel; the grid is
    ``(bands.n_blocks, B * Hq)`` and the tile ``BLOCK_M = bands.block_m``."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    qk_scale, cap_in = score_scales(request.scale, request.softcap)
    args = (q, k, lse, induction, duplicate, bands.q_order, bands.q_tok, bands.dup_order, bands.dup_tok,
            bands.ind_order, bands.ind_tok, bands.ranges, *q.stride(), *k.stride(),
            Hq, Hq // Hkv, Nq, Nk, bands.n_blocks, qk_scale, cap_in, request.window or 0)
    constexprs = dict(HEAD_DIM=D, BLOCK_D=head_block(D), FP32_INPUT=q.dtype == torch.float32,
                      HAS_WINDOW=request.window is not None, HAS_SOFTCAP=request.softcap is not None,
                      OFFSETS_32=(Nk - 1) * k.stride()[2] + (D - 1) * k.stride()[3] < 2 ** 31, BLOCK_M=bands.block_m)
    return args, constexprs


def token_match_band(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, request: StatsRequest, side: SideInputs,
                     block: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction and duplicate mass ``([B, Hq, Nq], [B, Hq, Nq])`` float32 from the main pass's
    ``lse [B, Hq, Nq]`` (contiguous, nats, learned sinks included). ``q [B, Hq, Nq, D]``,
    ``k [B, Hkv, Nk, D]``; ``side`` carries the token ids. ``block=(BLOCK_M, BLOCK_N)`` forces a
    tile (tests)."""
    B, Hq, Nq, _ = q.shape
    block_m, block_n = block or (INTERPRET_BAND_BLOCK if interpreting() else BAND_BLOCK)
    # The sorts depend on the tokens, the query count, the tile and the window only: every layer of
    # a forward (one SideInputs) with the same window reuses them.
    bands = side.derived_once(("token_bands", Nq, block_m, request.window),
                              lambda: token_bands(side, Nq, block_m, request.window))
    induction = torch.empty((B, Hq, Nq), dtype=torch.float32, device=q.device)
    duplicate = torch.empty((B, Hq, Nq), dtype=torch.float32, device=q.device)
    args, constexprs = band_launch_arguments(q, k, lse, induction, duplicate, bands, request)
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
