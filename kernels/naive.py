"""Materialised reference: the definitions, written as plainly as possible.

This builds the full ``[B, Hq, Nq, Nk]`` probability matrix, so it is for tests, eager
baselines and tiny inputs only (run it in float64 to get an oracle). ``chunked.py`` is the
memory-safe torch backend; ``triton_attention.py`` is the fused kernel.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .stats import AttentionStats


def allowed_keys(q_len: int, k_len: int, key_padding_mask: Optional[torch.Tensor], device,
                 window: Optional[int] = None) -> torch.Tensor:
    """``[B or 1, 1, Nq, Nk]`` bool: which keys each query may attend (bottom-right causal,
    padding, and with ``window`` only keys ``i - window < j <= i``)."""
    q_pos = torch.arange(q_len, device=device) + (k_len - q_len)
    k_pos = torch.arange(k_len, device=device)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
    if window is not None:
        allowed = allowed & (k_pos[None, :] > q_pos[:, None] - window)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    return allowed


def stats_from_probabilities(
    p: torch.Tensor,
    *,
    key_padding_mask: Optional[torch.Tensor] = None,
    offsets: Sequence[int] = (),
    probe_keys: Optional[torch.Tensor] = None,
    token_ids: Optional[torch.Tensor] = None,
    entropy: bool = False,
    lse: Optional[torch.Tensor] = None,
    distance: bool = False,
    local_window: Optional[int] = None,
    top1: bool = False,
    span: Optional[torch.Tensor] = None,
    window: Optional[int] = None,
    learned_sink: Optional[torch.Tensor] = None,
    key_mass: bool = False,
    query_weight: Optional[torch.Tensor] = None,
) -> AttentionStats:
    """Every statistic from a materialised causal probability matrix ``p [B, H, Nq, Nk]``
    (e.g. eager attention's ``output_attentions``); query ``i`` sits at key ``Nk - Nq + i``.
    ``lse`` is passed through (NaN-filled when not given). ``window``: the sliding window the
    probabilities were computed with. ``learned_sink [B, H, Nq]``: the mass a learned sink logit
    took (the keys' ``p`` then sums to ``1 - learned_sink``); it counts as one more outcome in
    the entropy and is returned as ``learned_sink``. ``key_mass``: also the column sums
    ``sum_i w[b, i] p_ij`` ``[B, H, Nk]``, ``w = query_weight [B, Nq]`` (None: 1; rows with weight
    0 do not count). A row holding NaN on a key it may attend gets NaN in every float statistic
    (``top1_index`` -1; its head's whole ``key_mass`` when it counts)."""
    B, H, Nq, Nk = p.shape
    dev = p.device
    q_pos = torch.arange(Nq, device=dev) + (Nk - Nq)
    k_pos = torch.arange(Nk, device=dev)
    allowed = allowed_keys(Nq, Nk, key_padding_mask, dev, window)[:, 0]  # [B or 1, Nq, Nk]
    has_key = allowed.any(-1)[:, None].expand(B, H, Nq)  # [B, H, Nq]
    zero = torch.zeros((), dtype=p.dtype, device=dev)
    row_nan = torch.where(allowed[:, None], p, zero).isnan().any(-1)
    p = torch.where(allowed[:, None], p, zero)

    if key_padding_mask is None:
        first = torch.zeros(B, dtype=torch.long, device=dev)
    else:
        first = key_padding_mask.long().argmax(-1)  # first True; rows with none have no key
    sink = p.gather(-1, first.view(B, 1, 1, 1).expand(B, H, Nq, 1))[..., 0]

    offs = None
    if len(offsets):
        cols = []
        for o in offsets:
            key = q_pos - o
            idx = key.clamp(min=0).view(1, 1, Nq, 1).expand(B, H, Nq, 1)
            cols.append(torch.where((key >= 0).view(1, 1, Nq), p.gather(-1, idx)[..., 0], 0.0))
        offs = torch.stack(cols, -1)

    probes = None
    if probe_keys is not None:
        probes = p.gather(-1, probe_keys[:, None, None, :].long().expand(B, H, Nq, probe_keys.shape[1]))

    ind = dup = None
    if token_ids is not None:
        tok_q = token_ids[:, Nk - Nq:]  # [B, Nq]
        same = tok_q[:, :, None] == token_ids[:, None, :]  # [B, Nq, Nk]: tok[i] == tok[j]
        dup_mask = same & (k_pos[None, None, :] < q_pos[None, :, None])
        # induction: key j whose predecessor j-1 holds the query token and is attendable
        prev_ok = torch.zeros_like(token_ids, dtype=torch.bool)
        prev_ok[:, 1:] = True if key_padding_mask is None else key_padding_mask[:, :-1]
        ind_mask = torch.zeros_like(same)
        ind_mask[:, :, 1:] = same[:, :, :-1] & (k_pos[None, None, :-1] < q_pos[None, :, None])
        ind_mask = ind_mask & prev_ok[:, None, :]
        dup = (p * dup_mask[:, None]).sum(-1)
        ind = (p * ind_mask[:, None]).sum(-1)

    ent = None
    if entropy:
        ent = -(torch.where(p > 0, p * torch.log(p), zero)).sum(-1)
        if learned_sink is not None:
            ent = ent - torch.where(learned_sink > 0, learned_sink * torch.log(learned_sink), zero)

    dist = None
    if distance:  # sum_j p_ij (i - j)
        gap = (q_pos[:, None] - k_pos[None, :]).to(p.dtype)  # [Nq, Nk]
        dist = (p * gap).sum(-1)

    local = None
    if local_window is not None:  # keys i - W < j <= i (j <= i is causality)
        band = k_pos[None, :] > q_pos[:, None] - local_window
        local = (p * band).sum(-1)

    top1_index = top1_prob = None
    if top1:  # torch.max returns the first maximal index: ties go to the smallest position
        top1_prob, top1_index = p.max(-1)
        top1_index = torch.where(has_key, top1_index, -1)

    span_mass = None
    if span is not None:  # keys start <= j < end, per sequence
        in_span = (k_pos[None, :] >= span[:, :1]) & (k_pos[None, :] < span[:, 1:])  # [B, Nk]
        span_mass = (p * in_span[:, None, None, :]).sum(-1)

    key_mass_sums = None
    if key_mass:  # rows with weight 0 do not count at all (not even a NaN they hold)
        w = torch.ones(B, Nq, dtype=p.dtype, device=dev) if query_weight is None else query_weight.to(p.dtype)
        counted = torch.where((w != 0)[:, None, :, None], p, zero)
        key_mass_sums = torch.einsum("bhqk,bq->bhk", counted, w)

    # copies: mark_nan_rows writes in place, and these belong to the caller
    lse = torch.full((B, H, Nq), math.nan, dtype=p.dtype, device=dev) if lse is None else lse.clone()
    learned_sink = None if learned_sink is None else learned_sink.clone()
    stats = AttentionStats(lse=lse, sink=torch.where(has_key, sink, zero), offsets=offs, probes=probes,
                           induction=ind, duplicate=dup, entropy=ent, distance=dist, local=local,
                           top1_index=top1_index, top1_prob=top1_prob, span=span_mass, learned_sink=learned_sink,
                           key_mass=key_mass_sums)
    if learned_sink is not None:
        row_nan = row_nan | learned_sink.isnan()
    return stats.mark_nan_rows(row_nan, query_weight)


def attention_with_stats_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    offsets: Sequence[int] = (),
    probe_keys: Optional[torch.Tensor] = None,
    token_ids: Optional[torch.Tensor] = None,
    entropy: bool = False,
    distance: bool = False,
    local_window: Optional[int] = None,
    top1: bool = False,
    span: Optional[torch.Tensor] = None,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    key_mass: bool = False,
    key_mass_queries: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, AttentionStats]:
    """Same contract as ``attention_with_stats``; computes in ``q.dtype``."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    dev = q.device
    allowed = allowed_keys(Nq, Nk, key_padding_mask, dev, window)

    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(s, dim=-1)  # -inf on rows with no attendable key
    learned_sink = None
    if sinks is not None:  # one more logit per head in every row's denominator, with no value
        sink_logit = sinks.to(s.dtype).view(1, Hq, 1).expand(B, Hq, Nq)
        lse = torch.logaddexp(lse, sink_logit)
        learned_sink = torch.exp(sink_logit - lse)
    p = torch.where(allowed, torch.exp(s - lse[..., None]), torch.zeros((), dtype=s.dtype, device=dev))
    out = torch.einsum("bhqk,bhkd->bhqd", p, v)
    stats = stats_from_probabilities(p, key_padding_mask=key_padding_mask, offsets=offsets, probe_keys=probe_keys,
                                     token_ids=token_ids, entropy=entropy, lse=lse, distance=distance,
                                     local_window=local_window, top1=top1, span=span, window=window,
                                     learned_sink=learned_sink, key_mass=key_mass, query_weight=key_mass_queries)
    return out, stats.mark_nan_rows(out.isnan().any(-1) | lse.isnan(), key_mass_queries)
