"""Fused causal flash-attention forward that also returns per-row attention statistics.

The structure follows the Triton fused-attention tutorial: one program owns BLOCK_M query
rows of one (batch, head), keeps the row max ``m_i``, row sum ``l_i`` and output accumulator
on chip, and walks the key tiles left to right. Scores are kept in base-2 units
(``s2 = s * log2(e)``) so that every exponential is an ``exp2``.

Statistics ride along at almost no cost:

* ``lse`` falls out of ``m_i`` and ``l_i``.
* Point probabilities (sink, fixed offsets) need one score each. Rather than fishing it out
  of the score tile inside the loop, the epilogue recomputes it from one gathered key row,
  ``p_ij = exp2(s2_ij - lse2_i)``: BLOCK_M x D multiply-adds per statistic instead of
  BLOCK_M x BLOCK_N work on every tile.
* Masked sums (token-match induction/duplicate mass, the entropy term) are accumulators
  rescaled by the same ``alpha = exp2(m_old - m_new)`` as ``l_i``.

Statistics that were not requested are compiled out (``tl.constexpr`` flags).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .side_inputs import SideInputs
from .stats import AttentionStats

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# A finite "minus infinity" for the running max, so that a tile in which a row has no
# attendable key yields alpha = exp2(0) = 1 instead of exp2(-inf + inf) = NaN.
NEG_BIG = tl.constexpr(-1.0e30)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _inner(
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc,
    q, q_pos, q_tok,
    K, V, TOK, TOKP, KPM,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
    lo, hi, Nk, qk_scale,
    offs_d,
    CAUSAL_MASK: tl.constexpr, HAS_PAD: tl.constexpr, HAS_TOK: tl.constexpr,
    HAS_ENT: tl.constexpr, FP32_IEEE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Online-softmax sweep over key tiles [lo, hi).

    With CAUSAL_MASK=False every key of every tile is known to be at or before every query
    of the block and inside [0, Nk), so no mask is built (the bulk of the work)."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_range = offs_n < Nk
        k_ptrs = K + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = V + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :] * stride_vd
        if CAUSAL_MASK:  # the ragged end of the keys lives in this stage only
            k = tl.load(k_ptrs, mask=in_range[None, :], other=0.0)  # [D, BLOCK_N]
        else:
            k = tl.load(k_ptrs)
        if FP32_IEEE:
            qk = tl.dot(q, k, input_precision="ieee")
        else:
            qk = tl.dot(q, k)
        s2 = qk * qk_scale  # scores in log2 units

        if CAUSAL_MASK:
            keep = (offs_n[None, :] <= q_pos[:, None]) & in_range[None, :]
            if HAS_PAD:
                kpm = tl.load(KPM + offs_n.to(tl.int64) * stride_mn, mask=in_range, other=0)
                keep = keep & (kpm[None, :] != 0)
            s2 = tl.where(keep, s2, float("-inf"))
        elif HAS_PAD:
            kpm = tl.load(KPM + offs_n.to(tl.int64) * stride_mn)
            s2 = tl.where(kpm[None, :] != 0, s2, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s2, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s2 - m_new[:, None])  # 0 on masked keys

        if HAS_ENT:
            # ent_acc = sum_j p_j * (s2_j - m): re-centre the old sum on the new max, then add.
            ent_acc = alpha * (ent_acc + l_i * (m_i - m_new))
            ent_acc += tl.sum(p * tl.where(p > 0, s2 - m_new[:, None], 0.0), 1)
        if HAS_TOK:
            k_tok = tl.load(TOK + offs_n, mask=in_range, other=-1)
            k_prev = tl.load(TOKP + offs_n, mask=in_range, other=-1)
            # duplicate: same token strictly before the query; induction: the key's
            # predecessor holds the query token (j-1 < i follows from causality, j <= i).
            is_dup = (k_tok[None, :] == q_tok[:, None]) & (offs_n[None, :] < q_pos[:, None])
            is_ind = k_prev[None, :] == q_tok[:, None]
            dup_acc = dup_acc * alpha + tl.sum(tl.where(is_dup, p, 0.0), 1)
            ind_acc = ind_acc * alpha + tl.sum(tl.where(is_ind, p, 0.0), 1)

        l_i = l_i * alpha + tl.sum(p, 1)
        if CAUSAL_MASK:
            v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        if FP32_IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i, ind_acc, dup_acc, ent_acc


@triton.jit
def _point_prob(q, K, key, valid, stride_kn, stride_kd, offs_d, qk_scale, lse2):
    """Probability of each row on one key per row: exp2(q . k_key * scale - lse2)."""
    kk = tl.load(K + key[:, None].to(tl.int64) * stride_kn + offs_d[None, :] * stride_kd,
                 mask=valid[:, None], other=0.0)
    s2 = tl.sum(q.to(tl.float32) * kk.to(tl.float32), 1) * qk_scale
    return tl.math.exp2(tl.where(valid, s2 - lse2, float("-inf")))


@triton.jit
def _attn_stats_fwd(
    Q, K, V, Out, LSE, SINK, OFFS, PRB, IND, DUP, ENT,
    TOK, TOKP, KPM, FIRST, OFFSET_VALUES, PROBE_KEYS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mn,
    Hq, GROUP, Nq, Nk, qk_scale, NQ_BUCKET,
    HEAD_DIM: tl.constexpr, N_OFFSETS: tl.constexpr, N_PROBES: tl.constexpr, HAS_PAD: tl.constexpr,
    HAS_TOK: tl.constexpr, HAS_ENT: tl.constexpr, FP32_IEEE: tl.constexpr,
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
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Nq
    # Bottom-right causal alignment: query row i sits at absolute key position Nk - Nq + i.
    q_pos = (Nk - Nq) + offs_m
    q = tl.load(Qb + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    ind_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    dup_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    ent_acc = tl.zeros([BLOCK_M], dtype=tl.float32)

    TOKb = TOK + b * Nk
    TOKPb = TOKP + b * Nk
    KPMb = KPM + b * stride_mb
    q_tok = tl.zeros([BLOCK_M], dtype=tl.int32)
    if HAS_TOK:
        q_tok = tl.load(TOKb + q_pos, mask=row_ok, other=-2)

    # Keys before the first unpadded key (left padding) are never attended: skip their tiles.
    first = tl.load(FIRST + b)
    lo = 0
    if HAS_PAD:
        lo = (first // BLOCK_N) * BLOCK_N
    # Stage 1: tiles entirely at or before the block's first query position need no causal
    # mask. Stage 2: the tiles straddling the diagonal (and the ragged end of the keys).
    q0 = Nk - Nq + start_m * BLOCK_M
    mid = tl.maximum(((q0 + 1) // BLOCK_N) * BLOCK_N, lo)
    hi = tl.minimum(q0 + BLOCK_M, Nk)

    acc, l_i, m_i, ind_acc, dup_acc, ent_acc = _inner(
        acc, l_i, m_i, ind_acc, dup_acc, ent_acc, q, q_pos, q_tok,
        Kb, Vb, TOKb, TOKPb, KPMb, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
        lo, mid, Nk, qk_scale, offs_d,
        False, HAS_PAD, HAS_TOK, HAS_ENT, FP32_IEEE, BLOCK_N)
    acc, l_i, m_i, ind_acc, dup_acc, ent_acc = _inner(
        acc, l_i, m_i, ind_acc, dup_acc, ent_acc, q, q_pos, q_tok,
        Kb, Vb, TOKb, TOKPb, KPMb, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
        mid, hi, Nk, qk_scale, offs_d,
        True, HAS_PAD, HAS_TOK, HAS_ENT, FP32_IEEE, BLOCK_N)

    # Epilogue. A row with no attendable key has l_i == 0: output 0, stats 0, lse -inf.
    has_key = l_i > 0
    l_safe = tl.where(has_key, l_i, 1.0)
    lse2 = m_i + tl.math.log2(l_safe)
    out = acc / l_safe[:, None]
    Ob = Out + b * stride_ob + h * stride_oh
    tl.store(Ob + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])

    row = bh * Nq + offs_m  # flat index into the contiguous [B, Hq, Nq] statistics
    tl.store(LSE + row, tl.where(has_key, lse2 * 0.6931471805599453, float("-inf")), mask=row_ok)

    first_vec = tl.zeros([BLOCK_M], dtype=tl.int32) + first
    sink_ok = has_key & (first_vec <= q_pos)
    tl.store(SINK + row, _point_prob(q, Kb, first_vec, sink_ok & row_ok, stride_kn, stride_kd,
                                     offs_d, qk_scale, lse2), mask=row_ok)

    for t in tl.static_range(N_OFFSETS):
        o = tl.load(OFFSET_VALUES + t)
        key = q_pos - o
        ok = has_key & row_ok & (key >= 0)
        if HAS_PAD:
            ok = ok & (tl.load(KPMb + key.to(tl.int64) * stride_mn, mask=ok, other=0) != 0)
        tl.store(OFFS + row * N_OFFSETS + t,
                 _point_prob(q, Kb, key, ok, stride_kn, stride_kd, offs_d, qk_scale, lse2),
                 mask=row_ok)

    for t in tl.static_range(N_PROBES):
        key = tl.zeros([BLOCK_M], dtype=tl.int32) + tl.load(PROBE_KEYS + b * N_PROBES + t)
        ok = has_key & row_ok & (key <= q_pos)
        if HAS_PAD:
            ok = ok & (tl.load(KPMb + key.to(tl.int64) * stride_mn, mask=ok, other=0) != 0)
        tl.store(PRB + row * N_PROBES + t,
                 _point_prob(q, Kb, key, ok, stride_kn, stride_kd, offs_d, qk_scale, lse2),
                 mask=row_ok)

    if HAS_TOK:
        tl.store(IND + row, ind_acc / l_safe, mask=row_ok)
        tl.store(DUP + row, dup_acc / l_safe, mask=row_ok)
    if HAS_ENT:
        ent = (tl.math.log2(l_safe) - ent_acc / l_safe) * 0.6931471805599453
        tl.store(ENT + row, tl.where(has_key, ent, 0.0), mask=row_ok)


def _smem_ok(cfg: triton.Config, head_dim: int, elt_bytes: int) -> bool:
    """Prune configs whose Q tile and K/V tiles (times pipeline stages) cannot fit in ~200 KB
    of shared memory (Hopper has 228 KB per SM)."""
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    tile_bytes = elt_bytes * (bm * head_dim + 2 * bn * head_dim * max(cfg.num_stages - 1, 1))
    return tile_bytes <= 200 * 1024


def _prune(configs, named_args, **kwargs):
    """Early pruning for the autotuner (which also keys on argument dtypes, so fp16, bf16 and
    fp32 are tuned separately)."""
    d = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    elt = named_args["Q"].element_size() if "Q" in named_args else 2
    # Decode-sized query blocks (Nq <= 16) get 16-row tiles; everything else the big ones.
    decode = named_args.get("NQ_BUCKET", kwargs.get("NQ_BUCKET", 1)) == 0
    kept = [c for c in configs if (c.kwargs["BLOCK_M"] == 16) == decode and _smem_ok(c, d, elt)]
    if d >= 256:  # large head dims: keep register pressure sane
        kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 128] or kept
    return kept or [c for c in configs if _smem_ok(c, d, elt)][:1] or configs[:1]


_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm in (64, 128)
    for bn in (32, 64, 128)
    for w in (4, 8)
    for s in (2, 3, 4)
] + [  # decode: one query row per sequence, so a 16-row tile (the smallest tl.dot takes)
    triton.Config({"BLOCK_M": 16, "BLOCK_N": bn}, num_warps=4, num_stages=s)
    for bn in (64, 128)
    for s in (2, 3)
]

_attn_stats_fwd_tuned = triton.autotune(
    configs=_GPU_CONFIGS,
    key=["HEAD_DIM", "N_OFFSETS", "N_PROBES", "HAS_PAD", "HAS_TOK", "HAS_ENT", "FP32_IEEE", "NQ_BUCKET"],
    prune_configs_by={"early_config_prune": _prune},
)(_attn_stats_fwd)

# Fixed small tiles under TRITON_INTERPRET=1: programs run serially on the CPU there.
INTERPRET_BLOCK = 16


def attention_with_stats_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    side: SideInputs,
    offsets: Sequence[int],
    entropy: bool,
    block: Optional[tuple[int, int]] = None,
) -> tuple[torch.Tensor, AttentionStats]:
    """Launch the fused kernel. Inputs are assumed validated by ``attention_with_stats``.

    ``block=(BLOCK_M, BLOCK_N)`` forces a tile shape (tests, benchmarks); otherwise the
    autotuner picks one on GPU and ``INTERPRET_BLOCK`` is used under the interpreter."""
    if block is None:  # decode (Nq <= 16) over long keys: split the keys over programs
        from . import triton_decode

        split_len = triton_decode.decode_split_len(q, k)
        if split_len is not None:
            return triton_decode.attention_with_stats_decode(
                q, k, v, scale=scale, side=side, offsets=offsets, entropy=entropy, split_len=split_len)
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    key_padding_mask, probe_keys, token_ids = side.key_padding_mask, side.probe_keys, side.token_ids
    dev = q.device
    f32 = torch.float32
    out = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=dev)
    lse = torch.empty(B, Hq, Nq, dtype=f32, device=dev)
    sink = torch.empty_like(lse)
    n_off = len(offsets)
    offs = torch.empty(B, Hq, Nq, n_off, dtype=f32, device=dev) if n_off else None
    n_probe = probe_keys.shape[1] if probe_keys is not None else 0
    probes = torch.empty(B, Hq, Nq, n_probe, dtype=f32, device=dev) if n_probe else None
    probe_vals = probe_keys if n_probe else None
    has_tok = token_ids is not None
    ind = torch.empty_like(lse) if has_tok else None
    dup = torch.empty_like(lse) if has_tok else None
    ent = torch.empty_like(lse) if entropy else None
    off_vals = torch.tensor(list(offsets) or [0], dtype=torch.int32, device=dev)
    if has_tok:
        tok, tokp = token_ids, side.prev_token_ids  # int32, contiguous
    else:
        tok = tokp = off_vals  # never read
    kpm = key_padding_mask.to(torch.int8) if key_padding_mask is not None else off_vals[:1].view(1, 1)
    first = side.first_key

    args = (
        q, k, v, out, lse, sink, offs if offs is not None else lse, probes if n_probe else lse,
        ind if has_tok else lse, dup if has_tok else lse, ent if entropy else lse,
        tok, tokp, kpm, first, off_vals, probe_vals if n_probe else off_vals,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *kpm.stride(),
        Hq, Hq // Hkv, Nq, Nk, scale * LOG2E, 0 if Nq <= 16 else (1 if Nq <= 256 else 2),
    )
    flags = dict(
        HEAD_DIM=D, N_OFFSETS=n_off, N_PROBES=n_probe, HAS_PAD=key_padding_mask is not None, HAS_TOK=has_tok,
        HAS_ENT=entropy, FP32_IEEE=q.dtype == torch.float32,
    )
    if block is None and not _interpreting():
        grid = lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), B * Hq)  # noqa: E731
        _attn_stats_fwd_tuned[grid](*args, **flags)
    else:
        bm, bn = block or (INTERPRET_BLOCK, INTERPRET_BLOCK)
        _attn_stats_fwd[(triton.cdiv(Nq, bm), B * Hq)](*args, **flags, BLOCK_M=bm, BLOCK_N=bn)
    stats = AttentionStats(lse=lse, sink=sink, offsets=offs, probes=probes, induction=ind, duplicate=dup, entropy=ent)
    return out, stats
