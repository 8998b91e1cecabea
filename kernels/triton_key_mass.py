"""``key_mass``: the attention each key receives, as a second Triton pass after the attention.

``key_mass[b, h, j] = sum_i w[b, i] p_ij`` is a column sum of the probability matrix. The row
log-sum-exp is known once the fused (or the split-decode) kernel has run, so one more pass gives
exact column sums at O(Nk) memory: one program per (key block, batch, query head) keeps its
``BLOCK_N`` keys on chip and walks the query blocks that can attend them, recomputing
``s = q k^T`` (with the attention pass's softcap) and ``p = 2^(s2 - lse2)``; no P @ V.

The row weight is folded into the exponent, ``w p = 2^(s2 - (lse2 - log2 w))`` (``log2 w``
computed once per forward: ``SideInputs.query_log2_weight``), so the loop costs one dot, one
``exp2``, one max and one add per score. A row that does not count (weight 0, no attendable
key, past ``Nq``) gets ``+inf`` there and adds exactly 0, even where its query holds NaN (the max
turns a NaN exponent into -1e30). Causality and a sliding window are masked only on the query
blocks that cross them; padded keys and keys past ``Nk`` are columns of their own, set to 0 once
at the end. Learned sinks need nothing: they are in ``lse`` already.

A NaN row that counts is handled by the caller (``AttentionStats.mark_nan_rows``: the head's
whole ``key_mass`` NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import triton
import triton.language as tl

from .request import StatsRequest
from .side_inputs import SideInputs
from .stats import AttentionStats
from .triton_common import (INTERPRETED, LOG2E_K, NEG_BIG, SMEM_LIMIT_BYTES, constexpr_names, device_guard,
                            device_smem_limit, head_block, interpreting, kernel_flags, program_heads, score_scales,
                            stride_args, tanh_softcap)


@triton.jit
def _key_mass_sweep(
    acc, k_t, offs_n, Qb, LSEb, QWb, stride_qm, stride_qd, lo, hi, Nq, shift, qk_scale, cap_in, window,
    MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_QW: tl.constexpr,
    FP32_INPUT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Add ``2^(s2 - ref2)`` of query blocks [lo, hi) to ``acc [BLOCK_M, BLOCK_N]``. With
    MASKED=False every query of every block may attend every key of the block (causally and
    inside its window), so no per-score mask is built."""
    offs_i = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    if BLOCK_D == HEAD_DIM:  # no head-dim mask: the loads stay vectorised
        d_ok = offs_d < BLOCK_D
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_i
        row_ok = offs_m < Nq
        # Loads that do not depend on loaded values, so that the pipeliner can issue them early.
        lse = tl.load(LSEb + offs_m, mask=row_ok, other=float("-inf"))
        q = tl.load(Qb + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
        counted = lse > float("-inf")  # False on rows with no key, past Nq, or NaN (marked by the caller)
        ref2 = lse * LOG2E_K
        if HAS_QW:  # log2 of the weight, -inf where it is 0
            log2_w = tl.load(QWb + offs_m, mask=row_ok, other=float("-inf"))
            counted = counted & (log2_w > float("-inf"))
            ref2 = ref2 - log2_w
        if FP32_INPUT:
            s = tl.dot(q, k_t, input_precision="tf32x3")
        else:
            s = tl.dot(q, k_t)
        if HAS_SOFTCAP:
            s = tanh_softcap(s, cap_in, FP32_INPUT)
        # Rows that do not count get ref2 = +inf: 2^-inf = 0. The max turns a NaN exponent into
        # -1e30 (max.f32 returns the number): a NaN a non-counting row holds adds 0; a counting
        # row with NaN has a NaN output, from which the caller marks the head.
        x = tl.maximum(s * qk_scale - tl.where(counted, ref2, float("inf"))[:, None], NEG_BIG)
        if INTERPRETED:  # as the GPU's max.f32: Triton 3.6's interpreter keeps the NaN (np.maximum)
            x = tl.where(x == x, x, NEG_BIG)
        if MASKED:
            q_pos = shift + offs_m
            keep = offs_n[None, :] <= q_pos[:, None]
            if HAS_WINDOW:  # transformers' sliding window: i - window < j <= i
                keep = keep & (offs_n[None, :] > q_pos[:, None] - window)
            x = tl.where(keep, x, NEG_BIG)
        acc += tl.math.exp2(x)
    return acc


@triton.jit
def _key_mass_fwd(
    Q, K, LSE, QW, KPM, FIRST, KM,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mn,
    Hq, GROUP, Nq, Nk, qk_scale, cap_in, window,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_PAD: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_QW: tl.constexpr, FP32_INPUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    bh, b, h, kvh = program_heads(Hq, GROUP)

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    in_range = offs_n < Nk
    key_ok = in_range
    if HAS_PAD:
        key_ok = key_ok & (tl.load(KPM + b * stride_mb + offs_n * stride_mn, mask=in_range, other=0) != 0)
    Kb = K + b * stride_kb + kvh * stride_kh
    k_t = tl.load(Kb + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None] * stride_kd,
                  mask=in_range[None, :] & (offs_d < HEAD_DIM)[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
    Qb = Q + b * stride_qb + h * stride_qh
    LSEb = LSE + bh * Nq
    QWb = QW + b * Nq

    # Query i sits at key position shift + i. Queries from q_lo on may attend some key of the
    # block; from mid on (block-aligned) every query attends every key of the block causally;
    # with a window, queries before win_end still have the block's first key in their window.
    shift = Nk - Nq
    q_lo = tl.maximum(start_n - shift, 0)
    q_hi = Nq
    if HAS_PAD:  # a block of padding only: nothing to add
        q_hi = tl.where(start_n + BLOCK_N <= tl.load(FIRST + b), q_lo, q_hi)
    if HAS_WINDOW:
        q_hi = tl.minimum(q_hi, tl.maximum(start_n + BLOCK_N + window - 1 - shift, q_lo))
    mid = q_lo + tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - shift - q_lo, 0), BLOCK_M) * BLOCK_M
    mid = tl.minimum(mid, q_hi)
    unmasked_end = q_hi
    if HAS_WINDOW:
        win_end = tl.minimum(start_n + window - shift, q_hi)
        unmasked_end = mid + tl.maximum(win_end - mid, 0) // BLOCK_M * BLOCK_M

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc = _key_mass_sweep(acc, k_t, offs_n, Qb, LSEb, QWb, stride_qm, stride_qd, q_lo, mid, Nq, shift, qk_scale,
                          cap_in, window, True, HAS_WINDOW, HAS_SOFTCAP, HAS_QW, FP32_INPUT, HEAD_DIM, BLOCK_D,
                          BLOCK_M)
    acc = _key_mass_sweep(acc, k_t, offs_n, Qb, LSEb, QWb, stride_qm, stride_qd, mid, unmasked_end, Nq, shift,
                          qk_scale, cap_in, window, False, HAS_WINDOW, HAS_SOFTCAP, HAS_QW, FP32_INPUT, HEAD_DIM,
                          BLOCK_D, BLOCK_M)
    if HAS_WINDOW:  # queries whose window starts inside the block
        acc = _key_mass_sweep(acc, k_t, offs_n, Qb, LSEb, QWb, stride_qm, stride_qd, unmasked_end, q_hi, Nq, shift,
                              qk_scale, cap_in, window, True, HAS_WINDOW, HAS_SOFTCAP, HAS_QW, FP32_INPUT, HEAD_DIM,
                              BLOCK_D, BLOCK_M)
    # Padded keys' columns summed probabilities of keys the rows may not attend: 0 instead.
    tl.store(KM + bh * Nk + offs_n, tl.where(key_ok, tl.sum(acc, 0), 0.0), mask=in_range)


# ----------------------------------------------------------------------------------------------
# Tiles: (BLOCK_N keys kept, BLOCK_M queries per step, warps, stages).

PREFILL_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=s)
    for bn, bm, w, s in ((128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3),
                         (64, 32, 4, 2))
]
# Decode (Nq <= 16): one 16-row query block per program, so the key tile sets the work.
DECODE_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_M": 16}, num_warps=w, num_stages=2)
    for bn, w in ((64, 4), (128, 4), (128, 8))
]
# Tiles that spill registers on sm_90 (triton 3.9; compiled with a window, softcap, padding and
# query weights, every config: bench.compile_report --kernel key_mass --all-configs), by (head-dim
# tile, element bytes). bf16/fp16 spill nowhere (D = 64..256). fp32 (3xTF32 keeps both halves of
# every operand) spills in every prefill tile from D = 128 on: the smallest tile, which spills
# least (64x32 at D = 128: 112 B), is the fallback; decode tiles spill at D = 128 in 128x16 w4.
_ALL_TILES = frozenset((c.kwargs["BLOCK_N"], c.kwargs["BLOCK_M"], c.num_warps, c.num_stages)
                       for c in PREFILL_CONFIGS + DECODE_CONFIGS)
_PREFILL_TILES = frozenset(t for t in _ALL_TILES if t[1] > 16)
SPILLING_TILES: dict[tuple[int, int], frozenset] = {
    (128, 4): _PREFILL_TILES | {(128, 16, 4, 2)},
    (256, 4): _ALL_TILES,
}
INTERPRET_BLOCK = (16, 16)  # (BLOCK_M, BLOCK_N) under TRITON_INTERPRET=1


def smem_bytes(block_n: int, block_m: int, num_stages: int, block_d: int, elt_bytes: int) -> int:
    """Shared memory of one program: the key tile plus ``num_stages`` query tiles; fp32 (3xTF32)
    takes 1.75 times that (measured: exact for the 128x64 and 64x32 tiles at D = 64..256)."""
    plain = elt_bytes * block_d * (block_n + num_stages * block_m)
    return plain * 7 // 4 if elt_bytes == 4 else plain


def keep_config(cfg: triton.Config, *, head_dim: int, elt_bytes: int, smem_limit: int = SMEM_LIMIT_BYTES) -> bool:
    """Whether the autotuner may try ``cfg``: it fits ``smem_limit`` bytes of shared memory
    (``device_smem_limit``) and is not measured to spill."""
    bn, bm, w, st = cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_M"], cfg.num_warps, cfg.num_stages
    bd = head_block(head_dim)
    spilling = SPILLING_TILES.get((max(64, bd), elt_bytes), frozenset())
    return smem_bytes(bn, bm, st, bd, elt_bytes) <= smem_limit and (bn, bm, w, st) not in spilling


def candidate_configs(bucket: str, *, head_dim: int, elt_bytes: int, smem_limit: int = SMEM_LIMIT_BYTES) -> list:
    """The configs the autotuner tries for one launch (never empty: the smallest tile otherwise)."""
    configs = DECODE_CONFIGS if bucket == "decode" else PREFILL_CONFIGS
    kept = [c for c in configs if keep_config(c, head_dim=head_dim, elt_bytes=elt_bytes, smem_limit=smem_limit)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_M"])]


def _prune_for(bucket: str):
    def prune(configs, named_args, **kwargs):
        a = {**named_args, **kwargs}
        return candidate_configs(bucket, head_dim=a["HEAD_DIM"], elt_bytes=a["Q"].element_size(),
                                 smem_limit=device_smem_limit(a["Q"].device))
    return prune


KEY_MASS_KERNEL = _key_mass_fwd  # for ahead-of-time compilation (kernels.aot)
AUTOTUNE_KEY = [name for name in constexpr_names(_key_mass_fwd) if name not in ("BLOCK_D", "BLOCK_M", "BLOCK_N")]
_TUNERS = {
    bucket: triton.autotune(configs=DECODE_CONFIGS if bucket == "decode" else PREFILL_CONFIGS, key=AUTOTUNE_KEY,
                            prune_configs_by={"early_config_prune": _prune_for(bucket)})(_key_mass_fwd)
    for bucket in ("decode", "prefill")
}


@dataclass(frozen=True)
class KeyMassLaunch:
    """One launch of ``_key_mass_fwd`` but the tile: ``args`` by parameter name, ``constexprs``,
    ``grid_keys = (Nk, B * Hq)`` (the grid is ``(cdiv(Nk, BLOCK_N), B * Hq)``) and the autotune
    ``bucket``."""

    args: dict
    constexprs: dict
    grid_keys: tuple[int, int]
    bucket: str


def key_mass_arguments(q: Any, k: Any, request: StatsRequest, side: SideInputs, stats: AttentionStats) -> KeyMassLaunch:
    """The launch that fills ``stats.key_mass`` from ``q``, ``k`` and ``stats.lse`` (tensors, or
    ``kernels.aot`` shape-only stand-ins). Inputs are assumed validated."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    flags = kernel_flags(_key_mass_fwd, request.flags(side))
    if flags["HAS_PAD"]:
        kpm = side.kernel_padding_mask()
        kpm_strides = tuple(kpm.stride())
    else:
        kpm, kpm_strides = side.first_key, (0, 0)  # never read
    qw = side.query_log2_weight
    qk_scale, cap_in = score_scales(request.scale, request.softcap)
    args = dict(Q=q, K=k, LSE=stats.lse, QW=stats.lse if qw is None else qw, KPM=kpm, FIRST=side.first_key,
                KM=stats.key_mass, **stride_args(q, ("stride_qb", "stride_qh", "stride_qm", "stride_qd")),
                **stride_args(k, ("stride_kb", "stride_kh", "stride_kn", "stride_kd")),
                **dict(zip(("stride_mb", "stride_mn"), kpm_strides)), Hq=Hq, GROUP=Hq // Hkv, Nq=Nq, Nk=Nk,
                qk_scale=qk_scale, cap_in=cap_in, window=request.window or 0)
    constexprs = dict(HEAD_DIM=D, BLOCK_D=head_block(D), **flags, HAS_QW=qw is not None,
                      FP32_INPUT=q.dtype == torch.float32)
    return KeyMassLaunch(args, constexprs, (Nk, B * Hq), "decode" if Nq <= 16 else "prefill")


def add_key_mass(q: torch.Tensor, k: torch.Tensor, request: StatsRequest, side: SideInputs, stats: AttentionStats,
                 block: Optional[tuple[int, int]] = None) -> None:
    """Fill ``stats.key_mass`` (``[B, Hq, Nk]``, allocated) after the attention pass wrote
    ``stats.lse``. ``block=(BLOCK_M, BLOCK_N)`` forces a tile (tests); otherwise the autotuner
    picks one on GPU and ``INTERPRET_BLOCK`` is used under the interpreter."""
    launch = key_mass_arguments(q, k, request, side, stats)
    n_keys, n_programs = launch.grid_keys
    with device_guard(q.device):
        if block is None and not interpreting():
            grid = lambda meta: (triton.cdiv(n_keys, meta["BLOCK_N"]), n_programs)  # noqa: E731
            _TUNERS[launch.bucket][grid](**launch.args, **launch.constexprs)
        else:
            bm, bn = block or INTERPRET_BLOCK
            _key_mass_fwd[(triton.cdiv(n_keys, bn), n_programs)](**launch.args, **launch.constexprs, BLOCK_N=bn,
                                                                 BLOCK_M=bm)
