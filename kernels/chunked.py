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

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

from .request import StatsRequest, torch_allocator
from .side_inputs import SideInputs
from .stats import AttentionStats

# Scores per head (and sequence) in one chunk: one head's [chunk, keys] float32 temporary is
# 2 MiB (a core's L2 on the machine measured), few enough chunks that the per-chunk Python work
# stays small. Ad-hoc sweeps on the Pythia-70M shape (2-core machine, partly loaded; not
# committed): 2^18..2^20 within noise of each other, 2^16-2^17 and 2^21-2^23 slower.
CHUNK_BUDGET_ELEMENTS = 1 << 19
# Below this many scores per head (decode steps, short prompts) the heads run in the calling
# thread: starting worker threads would cost more than they save.
PARALLEL_MIN_SCORES = 1 << 20
# Token-match masses are gathered at the (query, key) pairs whose tokens match, found once per
# call by sorting and shared by every head, unless there are more pairs than this fraction of
# the query x key grid (very repetitive text: dense per-chunk weights are cheaper) or than
# TOKEN_PAIRS_MAX (their index tensors, ~80 bytes a pair at the peak, must not grow with N^2).
SPARSE_TOKEN_MATCH_MAX_FRACTION = 1 / 16
TOKEN_PAIRS_MAX = 1 << 20
# exp's floor for finite inputs: the smallest argument whose exp is still a normal float32.
EXP_FLOOR = -87.0
# Masked scores, when q and k are finite: 0 * (NEG_BIG - m) stays 0 in the entropy sum. With
# infinite q or k they are -inf instead (a row whose attendable scores are all -inf must come out
# NaN, as in the reference, not attend masked keys) and the entropy sum clamps them.
NEG_BIG = -1.0e30


def all_finite(*tensors: torch.Tensor) -> bool:
    """Whether no tensor holds NaN or inf (one reduction each, over contiguous memory when the
    tensor is a [B, N, H, D] -> [B, H, N, D] transpose, as transformers hands q/k/v over)."""
    def flat(t):
        return t.transpose(1, 2) if not t.is_contiguous() and t.transpose(1, 2).is_contiguous() else t

    return all(bool(flat(t).sum(dtype=torch.float32).isfinite()) for t in tensors)


def chunk_rows(budget: int, first_key_span: int, window: Optional[int] = None) -> int:
    """Queries per chunk so that ``chunk x keys <= budget``, where a chunk starting at key
    position ``first_key_span`` attends ``first_key_span + chunk`` keys (fewer with a window):
    early chunks of a causal pass get more queries, late ones fewer."""
    a = first_key_span if window is None else min(first_key_span, window - 1)
    # largest C with C * (a + C) <= budget
    c = int((math.sqrt(a * a + 4 * budget) - a) // 2)
    return max(16, c)


def matching_pairs(key_tokens: torch.Tensor, query_tokens: torch.Tensor, before: torch.Tensor,
                   max_pairs: int) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(b, row, key)`` int64, sorted by row, of every pair with
    ``key_tokens[b, key] == query_tokens[b, row]`` and ``key < before[row]``; None when the
    matches (before the ``before`` filter) number more than ``max_pairs``.

    ``key_tokens`` ``[B, Nk]`` (-1 matches nothing), ``query_tokens`` ``[B, Nq]`` (>= 0),
    ``before`` ``[Nq]``. One sort of the keys by (sequence, token), one binary search per query."""
    B, Nk = key_tokens.shape
    Nq = query_tokens.shape[1]
    dev = key_tokens.device
    span = int(max(key_tokens.max(), query_tokens.max())) + 2  # tokens + 1 in [0, span): the batch in the high part
    base = torch.arange(B, device=dev)[:, None] * span
    keys = (key_tokens.long() + 1 + base).flatten()
    order = keys.argsort(stable=True)  # equal tokens keep key order
    sorted_keys = keys[order]
    queries = (query_tokens.long() + 1 + base).flatten()
    lo = torch.searchsorted(sorted_keys, queries)
    count = torch.searchsorted(sorted_keys, queries, right=True) - lo  # [B * Nq]
    total = int(count.sum())
    if total > max_pairs:
        return None
    query = torch.repeat_interleave(torch.arange(B * Nq, device=dev), count)
    first = torch.cumsum(count, 0) - count
    flat_key = order[torch.arange(total, device=dev) - first[query] + lo[query]]
    b, row, key = query // Nq, query % Nq, flat_key % Nk
    keep = key < before[row]
    b, row, key = b[keep], row[keep], key[keep]
    by_row = row.argsort(stable=True)
    return b[by_row], row[by_row], key[by_row]


def attention_lse_sink_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, side: SideInputs,
) -> Optional[tuple[torch.Tensor, AttentionStats]]:
    """Output, ``lse`` and ``sink`` only, from PyTorch's CPU flash attention (the SDPA kernel,
    which also returns the log-sum-exp); ``sink`` is one dot product per row on top. For the
    calls that request no other statistic (a model outside ``record()``). Returns None where it
    does not apply: not on the CPU, or queries that are neither all the keys nor a single one
    (SDPA's causal mask is top-left aligned), or inputs holding NaN or inf."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    if q.device.type != "cpu" or not (Nq == Nk or Nq == 1):
        return None
    # SDPA's CPU kernel hides a NaN query row (output 0, lse 0): non-finite inputs take the
    # chunked path, which reports them (one pass over q, k and v).
    if not all_finite(q, k, v):
        return None
    kpm = side.key_padding_mask
    mask = None
    if kpm is not None:
        mask = torch.zeros(B, 1, 1, Nk, dtype=q.dtype).masked_fill_(~kpm[:, None, None, :], -math.inf)
    if Hkv != Hq:
        k = k.repeat_interleave(Hq // Hkv, 1)
        v = v.repeat_interleave(Hq // Hkv, 1)
    # The aten kernel reads each head-dim vector as dense (any other stride is fine; a strided
    # last dim gives wrong numbers, no error): copy only such inputs.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, is_causal=Nq > 1, attn_mask=mask, scale=scale)
    lse = lse.to(torch.float32)
    q_pos = torch.arange(Nk - Nq, Nk)
    first_key = side.first_key.long()
    has_key = first_key[:, None, None] <= q_pos  # [B, 1, Nq]
    lse = torch.where(has_key, lse, -math.inf)  # SDPA gives 0 (and output 0) on empty rows
    k_first = k.gather(2, first_key.clamp(max=Nk - 1).view(B, 1, 1, 1).expand(B, Hq, 1, D))  # [B, Hq, 1, D]
    s_first = (q.float() @ k_first.float().transpose(-1, -2))[..., 0] * scale  # [B, Hq, Nq]
    sink = torch.where(has_key, torch.exp(s_first - lse), 0.0)
    return out, AttentionStats(lse=lse, sink=sink)


def attention_with_stats_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, request: StatsRequest,
                                 side: SideInputs, chunk_size: Optional[int] = None,
                                 ) -> tuple[torch.Tensor, AttentionStats]:
    """See ``attention_with_stats``; ``side`` holds the padding mask, first keys, token ids,
    probe keys and span; ``sinks`` is ``[Hq]`` float. ``chunk_size`` defaults to as many
    queries as fit ``CHUNK_BUDGET_ELEMENTS`` scores per head of the keys the chunk attends.

    On the CPU, with several intra-op threads (``torch.get_num_threads()``), the query heads
    are shared out to that many Python threads while PyTorch runs with one intra-op thread
    (the count is restored afterwards; other threads of the process run single-threaded
    meanwhile). Like PyTorch's own CPU flash attention this is one parallel split per call
    instead of a synchronisation after every operation of every chunk, which a busy machine
    punishes most, and each thread's chunk stays in its core's cache. Every head is computed
    exactly as it would be alone."""
    kwargs = dict(chunk_size=chunk_size)
    Hq, Nq = q.shape[1], q.shape[2]
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    if side.token_ids is not None:  # shared by every head
        q_pos = torch.arange(Nk - Nq, Nk, device=q.device)
        max_pairs = min(int(SPARSE_TOKEN_MATCH_MAX_FRACTION * q.shape[0] * Nq * Nk), TOKEN_PAIRS_MAX)
        query_tokens = side.token_ids[:, Nk - Nq :]
        duplicate_pairs = matching_pairs(side.token_ids, query_tokens, q_pos, max_pairs)  # keys j < i
        induction_pairs = matching_pairs(side.prev_token_ids, query_tokens, q_pos + 1, max_pairs)  # j <= i
        if duplicate_pairs is not None and induction_pairs is not None:
            kwargs["token_pairs"] = (duplicate_pairs, induction_pairs)
    threads = torch.get_num_threads()
    workers = min(threads, Hq)
    sinks = request.sinks
    if q.device.type != "cpu" or workers < 2 or Nq * Nk < PARALLEL_MIN_SCORES:
        return attention_heads_chunked(q, k, v, request, side, **kwargs)

    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()  # thread-local modes

    def head(h: int):  # query head h with its kv head, in one intra-op thread
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            head_request = request if sinks is None else dataclasses.replace(request, sinks=sinks[h : h + 1])
            return attention_heads_chunked(q[:, h : h + 1], k[:, h // G : h // G + 1], v[:, h // G : h // G + 1],
                                           head_request, side, **kwargs)

    torch.set_num_threads(1)  # new threads take this count at their first parallel operation
    try:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(head, range(Hq)))
    finally:
        torch.set_num_threads(threads)
    out = torch.cat([o for o, _ in parts], 1)
    stats = {name: torch.cat([st.as_dict()[name] for _, st in parts], 1) for name in parts[0][1].as_dict()}
    return out, AttentionStats(**stats)


@dataclasses.dataclass
class Chunk:
    """Query rows ``c0 .. c1`` (``C`` of them) over the keys ``k_lo .. k_hi`` (``K``) they may
    attend; ``q_pos [C]``: their absolute positions; ``diag``: the key column of query ``c0``."""

    c0: int
    c1: int
    k_lo: int
    k_hi: int
    q_pos: torch.Tensor
    rows: torch.Tensor  # arange(C)
    diag: int

    @property
    def C(self) -> int:
        return self.c1 - self.c0

    @property
    def K(self) -> int:
        return self.k_hi - self.k_lo


@dataclasses.dataclass
class ChunkSoftmax:
    """One chunk's softmax, ``[B, Hkv, G, C, K]`` (or ``[B, Hkv, G, C]`` per row): ``t`` the log
    of the unnormalised probabilities (score - ``m``), ``u = exp(t)`` (0 on masked keys), ``m``
    the row's reference max, ``m_keys``/``arg`` the max (and argmax) key score, ``l_keys`` and
    ``l`` the sums of ``u`` without and with the learned sink (``u_sink = exp(t_sink)``), ``norm``
    ``l`` or 1 on empty rows, ``has_key [B, 1, 1, C]`` rows with an attendable key."""

    t: torch.Tensor
    u: torch.Tensor
    m: torch.Tensor
    m_keys: torch.Tensor
    arg: Optional[torch.Tensor]
    l_keys: torch.Tensor
    l: torch.Tensor
    norm: torch.Tensor
    has_key: torch.Tensor
    t_sink: Optional[torch.Tensor]
    u_sink: Optional[torch.Tensor]


class ChunkedHeads:
    """``attention_heads_chunked``'s state: inputs prepared once, outputs, reused buffers; one
    method per step of a query chunk (masks, softmax core, point statistics, key-weighted
    masses, token match, entropy and top-1)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, request: StatsRequest, side: SideInputs,
                 token_pairs: Optional[tuple]):
        self.request, self.side, self.token_pairs = request, side, token_pairs
        self.first_key = side.first_key.long()
        self.probe_keys = side.probe_keys.long() if side.probe_keys is not None else None
        B, Hq, Nq, D = q.shape
        Hkv, Nk = k.shape[1], k.shape[2]
        self.B, self.Hq, self.Nq, self.D, self.Hkv, self.Nk, self.G = B, Hq, Nq, D, Hkv, Nk, Hq // Hkv
        self.shift = Nk - Nq  # query c sits at key position shift + c
        self.dev = dev = q.device
        f32 = torch.float32
        # Group query heads by their kv head so that k/v are never copied per query head.
        self.kf = k.to(f32)[:, :, None]  # [B, Hkv, 1, Nk, D]
        self.vf = v.to(f32)[:, :, None]
        self.out = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=dev)
        self.row_nan = torch.empty(B, Hq, Nq, dtype=torch.bool, device=dev)
        self.stats = request.allocate((B, Hq, Nq), side, torch_allocator(dev))
        if self.stats.key_mass is not None:  # summed over the chunks
            self.stats.key_mass.zero_()
        sinks = request.sinks
        self.sink_logit = sinks.to(f32).view(1, Hkv, self.G, 1) if sinks is not None else None
        # softcap * tanh(s / softcap): fold 1 / softcap into the query scale
        q_scale = request.scale if request.softcap is None else request.scale / request.softcap
        self.off_t = torch.as_tensor(list(request.offsets), dtype=torch.long, device=dev)
        self.qs = q.to(f32) * q_scale  # scaled once, not per chunk
        self.causal_masks = {}  # C -> [C, C] bool, True above the diagonal (key after query)
        self.finite = all_finite(q, k)
        self.mask_value = NEG_BIG if self.finite else -math.inf
        if side.key_padding_mask is not None:  # attendable keys before each position, for has_key
            self.n_keys = torch.nn.functional.pad(side.key_padding_mask.long().cumsum(-1), (1, 0))  # [B, Nk + 1]
        # The two score-sized temporaries (s then t, and u) live in buffers reused by every chunk
        # (not where autograd records the operations: out= has no derivative).
        self.needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, sinks))
        self.buffers = [torch.empty(0, dtype=f32, device=dev), torch.empty(0, dtype=f32, device=dev)]

    def tile(self, i: int, C: int, K: int) -> Optional[torch.Tensor]:
        """``[B, Hkv, G, C, K]`` view of buffer ``i`` (None where autograd records)."""
        n = self.B * self.Hq * C * K
        if self.needs_grad:
            return None
        if self.buffers[i].numel() < n:
            self.buffers[i] = torch.empty(n, dtype=torch.float32, device=self.dev)
        return self.buffers[i][:n].view(self.B, self.Hkv, self.G, C, K)

    def put(self, dst: torch.Tensor, ch: Chunk, val: torch.Tensor) -> None:
        """``[B, Hkv, G, C, ...]`` -> ``dst[:, :, c0:c1]``."""
        dst[:, :, ch.c0 : ch.c1] = val.reshape(self.B, self.Hq, ch.C, *val.shape[4:])

    def run(self, chunk_size: Optional[int]) -> tuple[torch.Tensor, AttentionStats]:
        per_row = CHUNK_BUDGET_ELEMENTS // self.B  # scores per head per query chunk, over its keys
        window, st = self.request.window, self.stats
        c0 = 0
        while c0 < self.Nq:
            c1 = min(self.Nq, c0 + (chunk_size or chunk_rows(per_row, self.shift + c0, window)))
            k_lo = max(0, self.shift + c0 - window + 1) if window is not None else 0  # keys this chunk can attend
            ch = Chunk(c0, c1, k_lo, self.shift + c1, torch.arange(c0, c1, device=self.dev) + self.shift,
                       torch.arange(c1 - c0, device=self.dev), self.shift + c0 - k_lo)
            masks, has_key = self.masks(ch)
            p = self.softmax(ch, masks, has_key)
            self.point_statistics(ch, p)
            self.key_weighted_masses(ch, p)
            if self.token_pairs is not None:
                self.sparse_token_match(ch, p)
            elif self.side.token_ids is not None:
                self.dense_token_match(ch, p)
            if st.entropy is not None:
                self.entropy(ch, p)
            if st.top1_index is not None:
                self.put(st.top1_index, ch, torch.where(p.has_key, p.arg + ch.k_lo, -1))
                # the max key's t is m_keys - m (0 without sinks): its probability is exp(that) / l
                self.put(st.top1_prob, ch, torch.where(p.has_key, torch.exp(p.m_keys - p.m) / p.norm, 0.0))
            if st.key_mass is not None:
                self.key_mass(ch, p)
            c0 = c1
        self.row_nan |= self.out.isnan().any(-1)
        return self.out, st.mark_nan_rows(self.row_nan, self.side.query_weight)

    def masks(self, ch: Chunk) -> tuple[list, torch.Tensor]:
        """``([(key columns, mask)], has_key [B, 1, 1, C])``: masks are built on the blocks where
        rows differ only: the causal diagonal block (keys shift + c0 ...) and a window's left block
        (the chunk's first C keys); applied to the scores, then to their exponentials."""
        C, K, rows, window, dev = ch.C, ch.K, ch.rows, self.request.window, self.dev
        kpm = self.side.key_padding_mask
        if C not in self.causal_masks:  # key diag + c vs query r
            self.causal_masks[C] = rows[None, :] > rows[:, None]
        masks = [(slice(ch.diag, None), self.causal_masks[C])]
        if window is not None and ch.k_lo > 0:  # key k_lo + c is in query r's window iff c > r - 1
            masks.append((slice(None, C), ~(rows[None, :] >= rows[:, None])[:, : min(C, K)]))
        elif window is not None:  # keys from 0: key c is in query r's window iff c > q_r - window
            left = torch.arange(min(C, K), device=dev)
            masks.append((slice(None, min(C, K)), ~(left[None, :] > ch.q_pos[:, None] - window)))
        if kpm is not None:
            masks.append((slice(None), ~kpm[:, None, None, None, ch.k_lo : ch.k_hi]))
            lo_pos = (ch.q_pos - window + 1).clamp(min=0) if window is not None else torch.zeros_like(ch.q_pos)
            has_key = (self.n_keys[:, ch.q_pos + 1] - self.n_keys[:, lo_pos] > 0)[:, None, None]  # [B, 1, 1, C]
        else:  # every query may attend itself
            has_key = torch.ones(1, 1, 1, C, dtype=torch.bool, device=dev)
        return masks, has_key

    def softmax(self, ch: Chunk, masks: list, has_key: torch.Tensor) -> ChunkSoftmax:
        """Scores, masks, the softmax core; writes ``out``, ``lse``, ``learned_sink`` and NaN rows."""
        B, Hkv, G, C, D = self.B, self.Hkv, self.G, ch.C, self.D
        qc = self.qs[:, :, ch.c0 : ch.c1].reshape(B, Hkv, G, C, D)
        s = torch.matmul(qc, self.kf[:, :, :, ch.k_lo : ch.k_hi].transpose(-1, -2), out=self.tile(0, C, ch.K))
        if self.request.softcap is not None:
            s.tanh_().mul_(self.request.softcap)
        for cols, mask in masks:
            s[..., cols].masked_fill_(mask, self.mask_value)
        arg = None
        if self.request.top1:
            m_keys, arg = s.max(-1)
        else:
            m_keys = s.amax(-1)
        sink_logit = self.sink_logit
        if sink_logit is None and self.side.key_padding_mask is None:  # every row has a key
            m = m_keys
        elif sink_logit is None:
            m = torch.where(has_key, m_keys, 0.0)  # empty rows: every u underflows to 0
        else:
            m = torch.maximum(m_keys, sink_logit)  # NaN-propagating
        t = s.sub_(m[..., None])  # log of the unnormalised probabilities
        if self.finite:  # exp is ~40x slower where its result is subnormal (masked keys, t < -87.3):
            t.clamp_(min=EXP_FLOOR)  # floor at exp(-87) = 1.6e-38, then masked keys set to 0 exactly
        u = torch.exp(t, out=self.tile(1, C, ch.K))
        if self.finite:
            for cols, mask in masks:
                u[..., cols].masked_fill_(mask, 0.0)
        l_keys = u.sum(-1)
        t_sink = u_sink = None
        if sink_logit is None:
            l = l_keys
        else:
            t_sink = sink_logit - m
            u_sink = t_sink.exp()
            l = l_keys + u_sink
            self.put(self.stats.learned_sink, ch, u_sink / l)
        norm = torch.where(l > 0, l, 1.0)  # 1 / norm turns sums of u into probabilities
        self.put(self.out, ch, (u @ self.vf[:, :, :, ch.k_lo : ch.k_hi]) / norm[..., None])
        row_lse = m + torch.log(l)  # -inf on empty rows
        self.put(self.stats.lse, ch, row_lse)
        self.put(self.row_nan, ch, row_lse.isnan())
        return ChunkSoftmax(t, u, m, m_keys, arg, l_keys, l, norm, has_key, t_sink, u_sink)

    def point_statistics(self, ch: Chunk, p: ChunkSoftmax) -> None:
        """The first-key sink, the fixed offsets and the probe keys: gathered probabilities."""
        B, Hkv, G, C, K, k_lo, st = self.B, self.Hkv, self.G, ch.C, ch.K, ch.k_lo, self.stats
        u, norm = p.u, p.norm
        if self.side.key_padding_mask is None and k_lo == 0:  # the first key is key 0, in the chunk
            self.put(st.sink, ch, u[..., 0] / norm)
        else:
            idx = (self.first_key - k_lo).clamp(0, K - 1).view(B, 1, 1, 1, 1).expand(B, Hkv, G, C, 1)
            first_in = (self.first_key >= k_lo).view(B, 1, 1, 1) & p.has_key  # a first key left of a window: p = 0
            self.put(st.sink, ch, torch.where(first_in, u.gather(-1, idx)[..., 0] / norm, 0.0))
        if st.offsets is not None:
            key = ch.q_pos[:, None] - self.off_t[None, :]  # [C, n_off]
            idx = (key - k_lo).clamp(min=0)[None, None, None].expand(B, Hkv, G, C, len(self.off_t))
            val = u.gather(-1, idx) / norm[..., None]  # masked keys carry u = 0
            self.put(st.offsets, ch, torch.where(key[None, None, None] >= k_lo, val, 0.0))
        if st.probes is not None:
            rel = self.probe_keys - k_lo  # [B, P]
            idx = rel.clamp(0, K - 1)[:, None, None, None, :].expand(B, Hkv, G, C, rel.shape[1])
            ok = ((rel >= 0) & (rel < K))[:, None, None, None, :]
            self.put(st.probes, ch, torch.where(ok, u.gather(-1, idx) / norm[..., None], 0.0))

    def key_weighted_masses(self, ch: Chunk, p: ChunkSoftmax) -> None:
        """Masses whose weights depend on the key only (span, distance, local): one matmul of u
        with weight columns, plus a small block correction for local."""
        B, Hkv, G, C, K, k_lo, st = self.B, self.Hkv, self.G, ch.C, ch.K, ch.k_lo, self.stats
        f32 = torch.float32
        cols, targets = [], []
        k_pos = torch.arange(k_lo, ch.k_hi, device=self.dev)  # [K]
        if st.span is not None:
            span = self.side.span
            cols.append(((k_pos[None, :] >= span[:, :1]) & (k_pos[None, :] < span[:, 1:])).to(f32))  # [B, K]
            targets.append(("span", st.span))
        last = self.shift + ch.c1 - 1
        if st.distance is not None:  # sum u (last - j) - (last - i) sum u: no large cancelling terms
            cols.append((last - k_pos).to(f32)[None].expand(B, K))
            targets.append(("distance", st.distance))
        if st.local is not None:  # ones from the first query's band start; rows r > 0 start r later
            a_first = self.shift + ch.c0 - self.request.local_window + 1
            cols.append((k_pos >= a_first).to(f32)[None].expand(B, K))
            targets.append(("local", st.local))
        if not cols:
            return
        weight = torch.stack(cols, -1)  # [B, K, R]
        sums = (p.u.reshape(B, self.Hq * C, K) @ weight).reshape(B, Hkv, G, C, len(cols))
        for r, (name, dst) in enumerate(targets):
            val = sums[..., r]
            if name == "distance":
                val = val - (last - ch.q_pos).to(f32) * p.l_keys
            elif name == "local":  # subtract keys a_first .. a_first + r - 1 of row r
                lo = a_first - k_lo
                c_lo, c_hi = max(lo, 0), min(lo + C, K)
                if c_hi > c_lo:
                    over = (torch.arange(c_lo, c_hi, device=self.dev)[None, :] - lo) < ch.rows[:, None]  # [C, cols]
                    val = val - (p.u[..., c_lo:c_hi] * over).sum(-1)
            self.put(dst, ch, val / p.norm)

    def sparse_token_match(self, ch: Chunk, p: ChunkSoftmax) -> None:
        """Token-match masses from ``matching_pairs``: gather u at this chunk's rows' pairs."""
        B, C, k_lo, st = self.B, ch.C, ch.k_lo, self.stats
        for dst, (pb, pr, pk) in zip((st.duplicate, st.induction), self.token_pairs):
            i0, i1 = torch.searchsorted(pr, torch.tensor([ch.c0, ch.c1], device=self.dev)).tolist()
            pb, pr, pk = pb[i0:i1], pr[i0:i1] - ch.c0, pk[i0:i1] - k_lo  # keys left of a window's tile: p = 0
            val = p.u[pb, :, :, pr, pk.clamp(min=0)]  # [P, Hkv, G]
            if k_lo > 0:
                val = torch.where((pk >= 0)[:, None, None], val, 0.0)
            acc = torch.zeros(B * C, self.Hkv, self.G, dtype=torch.float32, device=self.dev)
            acc.index_add_(0, pb * C + pr, val)
            self.put(dst, ch, acc.view(B, C, self.Hkv, self.G).permute(0, 2, 3, 1) / p.norm)

    def dense_token_match(self, ch: Chunk, p: ChunkSoftmax) -> None:
        """Token-match masses: weights per (row, key), shared by every head; one batched matmul."""
        B, C, K, k_lo, rows = self.B, ch.C, ch.K, ch.k_lo, ch.rows
        token_ids = self.side.token_ids
        tq = token_ids[:, ch.c0 + self.shift : ch.c1 + self.shift]  # [B, C]
        w = torch.empty(B, C, 2, K, dtype=torch.float32, device=self.dev)
        torch.eq(token_ids[:, None, k_lo : ch.k_hi], tq[:, :, None], out=w[:, :, 0])
        w[:, :, 0, ch.diag:] *= rows[None, :] < rows[:, None]  # duplicate: j < i
        torch.eq(self.side.prev_token_ids[:, None, k_lo : ch.k_hi], tq[:, :, None], out=w[:, :, 1])  # j <= i
        sums = torch.einsum("bhck,bcrk->bhcr", p.u.reshape(B, self.Hq, C, K), w).reshape(B, self.Hkv, self.G, C, 2)
        sums = sums / p.norm[..., None]
        self.put(self.stats.duplicate, ch, sums[..., 0])
        self.put(self.stats.induction, ch, sums[..., 1])

    def key_mass(self, ch: Chunk, p: ChunkSoftmax) -> None:
        """Adds the chunk's weighted column sums ``sum_c w_c u_cj / l_c`` to ``key_mass`` (keys
        ``k_lo .. k_hi``); rows with weight 0 add nothing, not even a NaN they hold."""
        B, Hkv, G, C = self.B, self.Hkv, self.G, ch.C
        w = self.side.query_weight
        w = torch.ones(B, C, device=self.dev) if w is None else w[:, ch.c0 : ch.c1]
        row_w = w[:, None, None, :] / p.norm  # [B, Hkv, G, C]
        u = p.u
        if not self.finite:
            u = torch.where((w != 0)[:, None, None, :, None], u, 0.0)
        sums = (row_w[..., None, :] @ u)[..., 0, :]  # [B, Hkv, G, K]
        self.stats.key_mass.view(B, Hkv, G, self.Nk)[..., ch.k_lo : ch.k_hi] += sums

    def entropy(self, ch: Chunk, p: ChunkSoftmax) -> None:
        """H = log l - sum(u t) / l (the learned sink is one more outcome)."""
        t = p.t
        if not self.finite:  # a -inf score has u = 0 and must add 0, not 0 * -inf = NaN
            t.clamp_(min=NEG_BIG)
        # row-wise dot products, in place (a batched GEMV is several times slower)
        ut = (p.u * t if self.needs_grad else t.mul_(p.u)).sum(-1)
        if p.u_sink is not None:
            ut = ut + p.u_sink * p.t_sink
        self.put(self.stats.entropy, ch, torch.where(p.l > 0, torch.log(p.norm) - ut / p.norm, 0.0))


def attention_heads_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, request: StatsRequest,
                            side: SideInputs, chunk_size: Optional[int] = None, token_pairs: Optional[tuple] = None,
                            ) -> tuple[torch.Tensor, AttentionStats]:
    """``attention_with_stats_chunked`` in the calling thread, every head in each operation.
    ``token_pairs``: ``matching_pairs`` for the duplicate and the induction mass, or None for
    dense per-chunk weights."""
    return ChunkedHeads(q, k, v, request, side, token_pairs).run(chunk_size)
