"""Attention received per key in ``record(key_mass=True)``: sums by key position, across forwards.

Every attention call returns ``key_mass [B, H, Nk]``: for each key, the attention it received from
the call's counted queries. Here it is added up by the key's *position*, counted from the first
real token of its sequence (left padding does not count, as for ``position_bins``), so that a
forward that extends the KV cache (chunked prefill, ``generate()``) adds to the same keys. Beside
it, the number of counted queries that can attend each key (causally, and inside the layer's
sliding window) is summed the same way: their ratio is Gu et al.'s ``alpha_k`` for every k.

With ``key_bins`` the sums are kept per bin of key position (reduced on the device before they
are stored). Memory is O(layers x heads x keys) (or x bins), times the sequences with
``per_sample``; never O(queries x keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .positions import query_positions

KEY_MASS = "key_mass"
KEY_ATTENTION = "key_attention"
KEY_STATISTICS = (KEY_MASS, KEY_ATTENTION)
UNKNOWN_TOKEN = -1  # a key position a sequence does not reach, or whose token id is not known


def key_slots(positions: torch.Tensor, edges: Optional[Sequence[float]], n_slots: int) -> torch.Tensor:
    """``[...]`` int64 slot of each key position (``positions`` -1: padded): the position itself,
    or its bin with ``edges``; ``n_slots`` (one past the last slot) for a key in none."""
    if edges is None:
        return torch.where(positions >= 0, positions, n_slots)
    edges_t = torch.tensor(edges, dtype=torch.float64, device=positions.device)
    idx = torch.bucketize(positions.to(torch.float64), edges_t, right=True) - 1
    inside = (positions >= 0) & (idx >= 0) & (idx < len(edges) - 1)
    return torch.where(inside, idx, n_slots)


def reach_by_position(q_pos: torch.Tensor, weight: torch.Tensor, n_pos: int, window: Optional[int]) -> torch.Tensor:
    """``[B, n_pos]`` float64: the summed weight of the queries that can attend each key position
    (query position ``i >= p``, and ``i - window < p`` with a sliding window); ``q_pos [B, Nq]``
    (-1: padded, never counted), ``weight [B, Nq]`` float64."""
    B = q_pos.shape[0]
    slot = torch.where(q_pos >= 0, q_pos, n_pos)
    hist = torch.zeros(B, n_pos + 1, dtype=torch.float64, device=q_pos.device)
    hist.scatter_add_(1, slot, torch.where(q_pos >= 0, weight, 0.0))
    at_or_after = hist[:, :n_pos].flip(-1).cumsum(-1).flip(-1)  # queries at positions >= p
    if window is None or window >= n_pos:
        return at_or_after
    beyond = torch.nn.functional.pad(at_or_after[:, window:], (0, window))  # queries at positions >= p + window
    return at_or_after - beyond


def add_padded(total: Optional[torch.Tensor], part: torch.Tensor) -> torch.Tensor:
    """``total + part`` along a last axis that may have grown (zeros fill the shorter one); a new
    tensor (sums are replaced, never updated in place, see ``Recording._state``)."""
    if total is None:
        return part
    n = max(total.shape[-1], part.shape[-1])
    pad = torch.nn.functional.pad
    return pad(total, (0, n - total.shape[-1])) + pad(part, (0, n - part.shape[-1]))


@dataclass
class ForwardKeys:
    """One forward's key layout on one device, shared by its layers."""

    slots: torch.Tensor  # [B, Nk] int64 slot of each key (n_slots: padded / in no bin)
    q_pos: torch.Tensor  # [B, Nq] query positions from the first real token (-1: padded)
    weight: torch.Tensor  # [B, Nq] float64 weight of each query in the key mass
    n_pos: int  # key positions this forward can hold (Nk: an upper bound, no device sync)
    reach: dict = field(default_factory=dict)  # window -> [B, n_slots] float64


@dataclass
class KeyBlock:
    """One batch of sequences: per-sample sums (with ``per_sample``) and what the keys were."""

    mass: dict = field(default_factory=dict)  # layer -> [B, H, slots] float64
    reach: dict = field(default_factory=dict)  # layer -> [B, slots] float64
    batch: int = 0  # B (0: no forward yet)
    n_keys: int = 0  # Nk of the latest forward
    padding: Optional[torch.Tensor] = None  # the latest [B, Nk] key padding mask (None: none)
    ids: Optional[torch.Tensor] = None  # [B, Nk] token ids of every key so far, if known

    def lengths(self) -> torch.Tensor:
        """``[B]`` int64 real keys of each sequence so far."""
        if self.padding is None:
            return torch.full((self.batch,), self.n_keys, dtype=torch.long)
        return self.padding.sum(-1).cpu().long()

    def tokens(self, n: int) -> torch.Tensor:
        """``[B, n]`` int64 token id at each key position (``UNKNOWN_TOKEN`` where none)."""
        out = torch.full((self.batch, n + 1), UNKNOWN_TOKEN, dtype=torch.long)
        if self.ids is not None:
            pos = query_positions(self.padding, self.batch, self.n_keys, self.n_keys, self.ids.device).cpu()
            out.scatter_(1, torch.where(pos >= 0, pos, n), self.ids.cpu().long())
        return out[:, :n]


class KeyMassSums:
    """Key-mass sums of a recording: pooled over sequences, and per batch of sequences."""

    def __init__(self, n_layers: int, edges: Optional[Sequence[float]], per_sample: bool):
        self.n_layers, self.edges, self.per_sample = n_layers, edges, per_sample
        self.mass: dict = {}  # layer -> [H, slots] float64, summed over sequences
        self.reach: dict = {}  # layer -> [slots] float64
        self.blocks: list[KeyBlock] = []

    # ------------------------------------------------------------ recording
    def start_sequences(self) -> None:
        self.blocks.append(KeyBlock())

    def forward_keys(self, kpm: Optional[torch.Tensor], ids: Optional[torch.Tensor], weight: torch.Tensor,
                     B: int, Nq: int, Nk: int, dev: torch.device) -> ForwardKeys:
        """The layout of this forward's keys (and notes them in the current block)."""
        block = self.blocks[-1]
        block.batch, block.n_keys, block.padding = B, Nk, kpm
        block.ids = ids if ids is not None and tuple(ids.shape) == (B, Nk) else None
        n_slots = self.n_slots(Nk)
        slots = key_slots(query_positions(kpm, B, Nk, Nk, dev), self.edges, n_slots)
        return ForwardKeys(slots=slots, q_pos=query_positions(kpm, B, Nq, Nk, dev), weight=weight, n_pos=Nk)

    def n_slots(self, n_pos: int) -> int:
        return n_pos if self.edges is None else len(self.edges) - 1

    def add(self, layer: int, key_mass: torch.Tensor, keys: ForwardKeys, window: Optional[int]) -> None:
        """Add one layer's ``key_mass [B, H, Nk]`` (float32, from the kernel)."""
        B, H, _ = key_mass.shape
        n_slots = self.n_slots(keys.n_pos)
        index = keys.slots[:, None, :].expand(B, H, -1)
        mass = torch.zeros(B, H, n_slots + 1, dtype=torch.float64, device=key_mass.device)
        mass = mass.scatter_add_(2, index, key_mass.to(torch.float64))[..., :n_slots]
        reach = self.reach_slots(keys, window)
        self.mass[layer] = add_padded(self.mass.get(layer), mass.sum(0))
        self.reach[layer] = add_padded(self.reach.get(layer), reach.sum(0))
        if self.per_sample:
            block = self.blocks[-1]
            block.mass[layer] = add_padded(block.mass.get(layer), mass)
            block.reach[layer] = add_padded(block.reach.get(layer), reach)

    def reach_slots(self, keys: ForwardKeys, window: Optional[int]) -> torch.Tensor:
        """``[B, slots]`` counted queries that can attend each key slot (cached per window)."""
        if window not in keys.reach:
            reach = reach_by_position(keys.q_pos, keys.weight, keys.n_pos, window)
            if self.edges is not None:
                n_slots = self.n_slots(keys.n_pos)
                slots = key_slots(torch.arange(keys.n_pos, device=reach.device), self.edges, n_slots)
                binned = torch.zeros(reach.shape[0], n_slots + 1, dtype=torch.float64, device=reach.device)
                reach = binned.index_add_(1, slots, reach)[:, :n_slots]
            keys.reach[window] = reach
        return keys.reach[window]

    # ------------------------------------------------------------ rollback
    def snapshot(self) -> tuple:
        last = self.blocks[-1] if self.blocks else None
        block = None if last is None else (last, dict(last.mass), dict(last.reach), last.batch, last.n_keys,
                                            last.padding, last.ids)
        return dict(self.mass), dict(self.reach), len(self.blocks), block

    def restore(self, snapshot: tuple) -> None:
        self.mass, self.reach, n_blocks, block = snapshot
        del self.blocks[n_blocks:]
        if block is not None:
            last, last.mass, last.reach, last.batch, last.n_keys, last.padding, last.ids = block

    # ------------------------------------------------------------ results
    def lengths(self) -> torch.Tensor:
        """``[sequences]`` int64: the real keys of every sequence (its length so far)."""
        out = [b.lengths() for b in self.blocks if b.batch]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def reached(self, lengths: torch.Tensor, n_slots: int) -> torch.Tensor:
        """``[sequences, slots]`` bool: which key slots each sequence has a key in."""
        if self.edges is None:
            return torch.arange(n_slots) < lengths[:, None]
        lows = torch.tensor(self.edges[:-1], dtype=torch.float64)
        return lows[None, :] < lengths[:, None]

    def n_slots_seen(self) -> int:
        """Slots of the results: bins, or every position up to the longest sequence."""
        if self.edges is not None:
            return len(self.edges) - 1
        lengths = self.lengths()
        return int(lengths.max()) if lengths.numel() else 0

    def pooled(self) -> dict[str, torch.Tensor]:
        """``key_mass`` (mean over the sequences that reach each key) and ``key_attention``
        (pooled mass over pooled counted queries that can attend it), ``[layers, heads, slots]``
        float32; NaN where no sequence reaches the key / no counted query can attend it."""
        n = self.n_slots_seen()
        lengths = self.lengths()
        n_seq = self.reached(lengths, n).sum(0).double()  # [slots]
        mass = torch.stack([fit(self.mass[layer].cpu(), n) for layer in range(self.n_layers)])  # [L, H, slots]
        reach = torch.stack([fit(self.reach[layer].cpu(), n) for layer in range(self.n_layers)])[:, None]
        return {KEY_MASS: ratio(mass, n_seq.expand_as(mass)), KEY_ATTENTION: ratio(mass, reach.expand_as(mass))}

    def per_sequence(self) -> dict[str, torch.Tensor]:
        """``key_mass`` and ``key_attention`` ``[sequences, layers, heads, slots]`` float32 (needs
        ``per_sample``); NaN in the slots a sequence does not reach."""
        n = self.n_slots_seen()
        masses, attentions = [], []
        for block in self.blocks:
            if not block.mass:
                continue
            mass = torch.stack([fit(block.mass[layer].cpu(), n) for layer in range(self.n_layers)], 1)  # [B, L, H, n]
            reach = torch.stack([fit(block.reach[layer].cpu(), n) for layer in range(self.n_layers)], 1)[:, :, None]
            outside = ~self.reached(block.lengths(), n)[:, None, None, :]
            masses.append(mass.masked_fill(outside, math.nan).float())
            attentions.append(ratio(mass, reach.expand_as(mass)).masked_fill(outside, math.nan))
        return {KEY_MASS: torch.cat(masses), KEY_ATTENTION: torch.cat(attentions)}

    def tokens(self) -> torch.Tensor:
        """``[sequences, positions]`` int64 token id at each key position (counted from the
        sequence's first real token); ``UNKNOWN_TOKEN`` where the sequence has no key or the
        forward was given no ``input_ids``."""
        lengths = self.lengths()
        n = int(lengths.max()) if lengths.numel() else 0
        rows = [b.tokens(n) for b in self.blocks if b.batch]
        return torch.cat(rows) if rows else torch.zeros(0, n, dtype=torch.long)


def fit(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` cut or zero-padded to ``n`` along its last axis."""
    return t[..., :n] if t.shape[-1] >= n else torch.nn.functional.pad(t, (0, n - t.shape[-1]))


def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` as float32, NaN where ``den`` is 0."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), math.nan).float()
