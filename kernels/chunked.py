"""Pure-PyTorch backend: exact statistics with O(chunk x Nk) extra memory.

Queries are processed ``chunk_size`` at a time; each chunk materialises only its own
``[B, Hq, chunk, Nk]`` float32 scores. This is the CPU fallback and a test oracle for the
Triton kernel. Inputs are assumed validated by ``dispatch.attention_with_stats``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .side_inputs import SideInputs
from .stats import AttentionStats

# Elements of one [B, Hq, chunk, Nk] float32 temporary (4 MiB); a chunk holds ~10 of them.
CHUNK_BUDGET_ELEMENTS = 1 << 20


def attention_with_stats_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    side: SideInputs,
    offsets: Sequence[int],
    entropy: bool,
    chunk_size: Optional[int] = None,
) -> tuple[torch.Tensor, AttentionStats]:
    """See ``attention_with_stats``; ``side`` holds the padding mask, first keys, token ids and
    probe keys. ``chunk_size`` defaults to as many queries as fit ``CHUNK_BUDGET_ELEMENTS`` scores."""
    key_padding_mask, probe_keys, token_ids = side.key_padding_mask, side.probe_keys, side.token_ids
    first_key, prev_token_ids = side.first_key.long(), side.prev_token_ids
    if probe_keys is not None:
        probe_keys = probe_keys.long()
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    if chunk_size is None:
        chunk_size = max(1, min(Nq, CHUNK_BUDGET_ELEMENTS // (B * Hq * Nk)))
    dev = q.device
    f32 = torch.float32
    # Group query heads by their kv head so that k/v are never copied per query head.
    kf = k.to(f32)[:, :, None]  # [B, Hkv, 1, Nk, D]
    vf = v.to(f32)[:, :, None]
    k_pos = torch.arange(Nk, device=dev)

    out = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=dev)
    lse = torch.empty(B, Hq, Nq, dtype=f32, device=dev)
    sink = torch.empty_like(lse)
    offs = torch.empty(B, Hq, Nq, len(offsets), dtype=f32, device=dev) if len(offsets) else None
    n_probe = probe_keys.shape[1] if probe_keys is not None else 0
    probes = torch.empty(B, Hq, Nq, n_probe, dtype=f32, device=dev) if n_probe else None
    ind = torch.empty_like(lse) if token_ids is not None else None
    dup = torch.empty_like(lse) if token_ids is not None else None
    ent = torch.empty_like(lse) if entropy else None
    off_t = torch.as_tensor(list(offsets), dtype=torch.long, device=dev)

    for c0 in range(0, Nq, chunk_size):
        c1 = min(Nq, c0 + chunk_size)
        C = c1 - c0
        qc = q[:, :, c0:c1].to(f32).reshape(B, Hkv, G, C, D)
        s = (qc @ kf.transpose(-1, -2)) * scale  # [B, Hkv, G, C, Nk]
        q_pos = torch.arange(c0, c1, device=dev) + (Nk - Nq)
        allowed = k_pos[None, :] <= q_pos[:, None]  # [C, Nk]
        allowed = allowed[None].expand(B, C, Nk)
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[:, None, :]
        allowed5 = allowed[:, None, None]  # [B, 1, 1, C, Nk]
        s = s.masked_fill(~allowed5, -math.inf)
        row_lse = torch.logsumexp(s, dim=-1)  # -inf on empty rows
        has_key = allowed.any(-1)[:, None, None]  # [B, 1, 1, C]
        safe_lse = torch.where(has_key, row_lse, torch.zeros((), device=dev))
        p = torch.exp(s - safe_lse[..., None])  # exactly 0 on masked keys
        out[:, :, c0:c1] = (p @ vf).reshape(B, Hq, C, D).to(q.dtype)
        lse[:, :, c0:c1] = row_lse.reshape(B, Hq, C)

        idx = first_key.clamp(max=Nk - 1).view(B, 1, 1, 1, 1).expand(B, Hkv, G, C, 1)
        p_first = p.gather(-1, idx)[..., 0]
        sink[:, :, c0:c1] = torch.where(has_key, p_first, 0.0).reshape(B, Hq, C)

        if offs is not None:
            key = q_pos[:, None] - off_t[None, :]  # [C, n_off]
            idx = key.clamp(min=0)[None, None, None].expand(B, Hkv, G, C, len(offsets))
            val = p.gather(-1, idx)  # masked keys already carry probability 0
            offs[:, :, c0:c1] = torch.where(key[None, None, None] >= 0, val, 0.0).reshape(B, Hq, C, -1)

        if probes is not None:
            idx = probe_keys[:, None, None, None, :].expand(B, Hkv, G, C, n_probe)
            probes[:, :, c0:c1] = p.gather(-1, idx).reshape(B, Hq, C, n_probe)

        if token_ids is not None:
            tq = token_ids[:, Nk - Nq + c0 : Nk - Nq + c1]  # [B, C]
            dup_mask = (token_ids[:, None, :] == tq[:, :, None]) & (k_pos[None, None, :] < q_pos[None, :, None])
            ind_mask = prev_token_ids[:, None, :] == tq[:, :, None]  # j <= i comes from causality
            dup[:, :, c0:c1] = (p * dup_mask[:, None, None]).sum(-1).reshape(B, Hq, C)
            ind[:, :, c0:c1] = (p * ind_mask[:, None, None]).sum(-1).reshape(B, Hq, C)

        if ent is not None:
            plogp = torch.where(p > 0, p * (s - safe_lse[..., None]), 0.0)
            ent[:, :, c0:c1] = (-plogp.sum(-1)).reshape(B, Hq, C)

    return out, AttentionStats(lse=lse, sink=sink, offsets=offs, probes=probes, induction=ind, duplicate=dup, entropy=ent)
