"""Pure-PyTorch backend: exact statistics with O(chunk x Nk) extra memory.

Queries are processed ``chunk_size`` at a time; each chunk materialises only the
``[B, Hq, chunk, keys]`` float32 scores of the keys it can attend: keys after the chunk's last
query are never computed (causal tile skipping). This is the CPU fallback and a test oracle for
the Triton kernel. Inputs are assumed validated by ``dispatch.attention_with_stats``.

Per chunk the softmax is kept unnormalised: ``t = s - m`` (``m`` the row max), ``u = exp(t)``,
``l = sum u``; every mass statistic is a sum of ``u`` divided by ``l`` once per row, so the
probability matrix itself is never written.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .side_inputs import SideInputs
from .stats import AttentionStats

# Elements of one [B, Hq, chunk, keys] float32 temporary (4 MiB); a chunk holds a few of them.
CHUNK_BUDGET_ELEMENTS = 1 << 20
# Masked scores: finite, so that 0 * score stays 0 in the entropy sum (never 0 * -inf = NaN).
NEG_BIG = -1.0e30


def attention_with_stats_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    side: SideInputs,
    offsets: Sequence[int],
    entropy: bool,
    distance: bool = False,
    local_window: Optional[int] = None,
    top1: bool = False,
    chunk_size: Optional[int] = None,
) -> tuple[torch.Tensor, AttentionStats]:
    """See ``attention_with_stats``; ``side`` holds the padding mask, first keys, token ids,
    probe keys and span. ``chunk_size`` defaults to as many queries as fit
    ``CHUNK_BUDGET_ELEMENTS`` scores of all ``Nk`` keys."""
    key_padding_mask, probe_keys, token_ids, span = side.key_padding_mask, side.probe_keys, side.token_ids, side.span
    first_key, prev_token_ids = side.first_key.long(), side.prev_token_ids
    if probe_keys is not None:
        probe_keys = probe_keys.long()
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    shift = Nk - Nq  # query c sits at key position shift + c
    if chunk_size is None:
        chunk_size = max(1, min(Nq, CHUNK_BUDGET_ELEMENTS // (B * Hq * Nk)))
    dev = q.device
    f32 = torch.float32
    # Group query heads by their kv head so that k/v are never copied per query head.
    kf = k.to(f32)[:, :, None]  # [B, Hkv, 1, Nk, D]
    vf = v.to(f32)[:, :, None]

    out = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=dev)
    row_nan = torch.empty(B, Hq, Nq, dtype=torch.bool, device=dev)
    lse = torch.empty(B, Hq, Nq, dtype=f32, device=dev)
    sink = torch.empty_like(lse)
    offs = torch.empty(B, Hq, Nq, len(offsets), dtype=f32, device=dev) if len(offsets) else None
    n_probe = probe_keys.shape[1] if probe_keys is not None else 0
    probes = torch.empty(B, Hq, Nq, n_probe, dtype=f32, device=dev) if n_probe else None
    ind = torch.empty_like(lse) if token_ids is not None else None
    dup = torch.empty_like(lse) if token_ids is not None else None
    ent = torch.empty_like(lse) if entropy else None
    dist = torch.empty_like(lse) if distance else None
    local = torch.empty_like(lse) if local_window is not None else None
    top1_prob = torch.empty_like(lse) if top1 else None
    top1_index = torch.empty(B, Hq, Nq, dtype=torch.long, device=dev) if top1 else None
    span_mass = torch.empty_like(lse) if span is not None else None
    off_t = torch.as_tensor(list(offsets), dtype=torch.long, device=dev)

    def put(dst, c0, c1, val):  # [B, Hkv, G, C, ...] -> dst[:, :, c0:c1]
        dst[:, :, c0:c1] = val.reshape(B, Hq, c1 - c0, *val.shape[4:])

    for c0 in range(0, Nq, chunk_size):
        c1 = min(Nq, c0 + chunk_size)
        C = c1 - c0
        k_lo, k_hi = 0, shift + c1  # keys this chunk can attend
        K = k_hi - k_lo
        q_pos = torch.arange(c0, c1, device=dev) + shift  # [C]
        k_pos = torch.arange(k_lo, k_hi, device=dev)  # [K]

        qc = q[:, :, c0:c1].to(f32).reshape(B, Hkv, G, C, D) * scale
        s = qc @ kf[:, :, :, k_lo:k_hi].transpose(-1, -2)  # [B, Hkv, G, C, K]
        allowed = (k_pos[None, :] <= q_pos[:, None])[None]  # [1, C, K]
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[:, None, k_lo:k_hi]  # [B, C, K]
        s.masked_fill_(~allowed[:, None, None], NEG_BIG)
        has_key = allowed.any(-1)[:, None, None]  # [B or 1, 1, 1, C]

        if top1:
            m, arg = s.max(-1)
        else:
            m = s.amax(-1)
        m = torch.where(has_key, m, 0.0)  # empty rows: every u underflows to 0
        t = s.sub_(m[..., None])  # log of the unnormalised probabilities
        u = t.exp()
        l_keys = u.sum(-1)
        l = l_keys
        norm = torch.where(l > 0, l, 1.0)  # 1 / norm turns sums of u into probabilities
        put(out, c0, c1, (u @ vf[:, :, :, k_lo:k_hi]) / norm[..., None])
        row_lse = m + torch.log(l)  # -inf on empty rows
        put(lse, c0, c1, row_lse)

        idx = (first_key - k_lo).clamp(0, K - 1).view(B, 1, 1, 1, 1).expand(B, Hkv, G, C, 1)
        put(sink, c0, c1, torch.where(has_key, u.gather(-1, idx)[..., 0] / norm, 0.0))

        if offs is not None:
            key = q_pos[:, None] - off_t[None, :]  # [C, n_off]
            idx = (key - k_lo).clamp(min=0)[None, None, None].expand(B, Hkv, G, C, len(offsets))
            val = u.gather(-1, idx) / norm[..., None]  # masked keys carry u = 0
            put(offs, c0, c1, torch.where(key[None, None, None] >= k_lo, val, 0.0))

        if probes is not None:
            rel = probe_keys - k_lo  # [B, P]
            idx = rel.clamp(0, K - 1)[:, None, None, None, :].expand(B, Hkv, G, C, n_probe)
            ok = ((rel >= 0) & (rel < K))[:, None, None, None, :]
            put(probes, c0, c1, torch.where(ok, u.gather(-1, idx) / norm[..., None], 0.0))

        if token_ids is not None:
            tq = token_ids[:, c0 + shift : c1 + shift]  # [B, C]
            dup_mask = (token_ids[:, None, k_lo:k_hi] == tq[:, :, None]) & (k_pos[None, None, :] < q_pos[None, :, None])
            ind_mask = prev_token_ids[:, None, k_lo:k_hi] == tq[:, :, None]  # j <= i comes from causality
            put(dup, c0, c1, (u * dup_mask[:, None, None]).sum(-1) / norm)
            put(ind, c0, c1, (u * ind_mask[:, None, None]).sum(-1) / norm)

        if ent is not None:  # H = log l - sum(u t) / l; masked keys give 0 * finite = 0
            put(ent, c0, c1, torch.where(l > 0, torch.log(norm) - (u * t).sum(-1) / norm, 0.0))

        if dist is not None:  # sum u (last - j) - (last - i) sum u: no large cancelling terms
            last = shift + c1 - 1
            back = (last - k_pos).to(f32)  # [K]
            fwd = (last - q_pos).to(f32)  # [C]
            put(dist, c0, c1, (u @ back - fwd * l_keys) / norm)

        if local is not None:
            band = k_pos[None, :] > q_pos[:, None] - local_window  # [C, K]; j <= i from causality
            put(local, c0, c1, (u * band).sum(-1) / norm)

        if top1_index is not None:
            put(top1_index, c0, c1, torch.where(has_key, arg + k_lo, -1))
            # the max key's t is 0: its probability is 1 / l
            put(top1_prob, c0, c1, torch.where(has_key, 1.0 / norm, 0.0))

        if span_mass is not None:
            in_span = ((k_pos[None, :] >= span[:, :1]) & (k_pos[None, :] < span[:, 1:])).to(f32)  # [B, K]
            put(span_mass, c0, c1, (u.reshape(B, Hkv * G * C, K) @ in_span[:, :, None]).reshape(B, Hkv, G, C) / norm)

        put(row_nan, c0, c1, row_lse.isnan())

    row_nan |= out.isnan().any(-1)
    stats = AttentionStats(lse=lse, sink=sink, offsets=offs, probes=probes, induction=ind, duplicate=dup,
                           entropy=ent, distance=dist, local=local, top1_index=top1_index, top1_prob=top1_prob,
                           span=span_mass)
    return out, stats.mark_nan_rows(row_nan)
