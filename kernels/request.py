"""What one ``attention_with_stats`` call computes: ``StatsRequest``.

``dispatch.attention_with_stats`` validates its arguments once and builds the request; every
backend takes ``(q, k, v, request, side_inputs)``. The request derives what the backends would
otherwise each work out: which optional features a call uses, the kernels' constexpr flags, and
the ``AttentionStats`` outputs (allocated here, in one place, for all backends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .side_inputs import SideInputs
from .stats import AttentionStats

# empty(shape, dtype) -> a tensor (or a shape-only stand-in, kernels.aot)
Allocator = Callable[[Sequence[int], torch.dtype], Any]


@dataclass(frozen=True, eq=False)
class StatsRequest:
    """The statistics and score modifiers of one call (see ``attention_with_stats``).

    ``scale``: score scale; ``offsets``: fixed diagonal offsets; ``entropy``/``distance``/``top1``:
    also return those; ``local_window``: mass on the last W keys; ``window``: sliding window;
    ``softcap``: logit soft-capping; ``sinks``: ``[Hq]`` learned sink logits (float32 tensor, or a
    shape-only stand-in); ``key_mass``: also the attention each key receives (weighted by the side
    inputs' ``query_weight``). Token ids, probe keys, span, padding and query weights are
    per-forward data: they come with the ``SideInputs``. Inputs are assumed validated."""

    scale: float
    offsets: tuple[int, ...] = ()
    entropy: bool = False
    distance: bool = False
    local_window: Optional[int] = None
    top1: bool = False
    window: Optional[int] = None
    softcap: Optional[float] = None
    sinks: Any = None
    key_mass: bool = False

    def uses(self, side: SideInputs) -> dict[str, bool]:
        """Which of the optional features (``dispatch.OPTIONAL_FEATURES`` less the head dim) this
        call uses, by argument name."""
        return {"window": self.window is not None, "softcap": self.softcap is not None,
                "sinks": self.sinks is not None, "distance": self.distance,
                "local_window": self.local_window is not None, "top1": self.top1, "span": side.span is not None,
                "key_mass": self.key_mass}

    def is_plain(self, side: SideInputs) -> bool:
        """Output, ``lse`` and ``sink`` only (a model outside ``record()``)."""
        return not (self.offsets or self.entropy or any(self.uses(side).values()) or side.token_ids is not None
                    or side.probe_keys is not None)

    def flags(self, side: SideInputs) -> dict:
        """The kernels' constexpr feature flags (each kernel takes those it declares)."""
        return dict(
            N_OFFSETS=len(self.offsets), N_PROBES=n_probes(side), HAS_PAD=side.key_padding_mask is not None,
            HAS_TOK=side.token_ids is not None, HAS_ENT=self.entropy, HAS_WINDOW=self.window is not None,
            HAS_SOFTCAP=self.softcap is not None, HAS_SINKS=self.sinks is not None, HAS_DIST=self.distance,
            HAS_LOCAL=self.local_window is not None, HAS_TOP1=self.top1, HAS_SPAN=side.span is not None,
        )

    def allocate(self, rows: tuple[int, int, int], side: SideInputs, empty: Allocator) -> AttentionStats:
        """The outputs of this request for ``rows = (B, Hq, Nq)``, uninitialised; statistics that
        are off are None (``key_mass`` is ``[B, Hq, side.k_len]``). ``empty(shape, dtype)``
        allocates (e.g. ``torch.empty`` on a device)."""
        f32 = torch.float32

        def row_stat(wanted: bool, dtype: torch.dtype = f32):
            return empty(rows, dtype) if wanted else None

        n_off, n_probe, has_tok = len(self.offsets), n_probes(side), side.token_ids is not None
        return AttentionStats(
            lse=row_stat(True), sink=row_stat(True),
            offsets=empty((*rows, n_off), f32) if n_off else None,
            probes=empty((*rows, n_probe), f32) if n_probe else None,
            induction=row_stat(has_tok), duplicate=row_stat(has_tok), entropy=row_stat(self.entropy),
            distance=row_stat(self.distance), local=row_stat(self.local_window is not None),
            top1_index=row_stat(self.top1, torch.int64), top1_prob=row_stat(self.top1),
            span=row_stat(side.span is not None), learned_sink=row_stat(self.sinks is not None),
            key_mass=empty((*rows[:2], side.k_len), f32) if self.key_mass else None)


def n_probes(side: SideInputs) -> int:
    """Probe keys per batch row (0 without probes)."""
    return side.probe_keys.shape[1] if side.probe_keys is not None else 0


def torch_allocator(device: torch.device) -> Allocator:
    """``StatsRequest.allocate``'s allocator for real tensors on ``device``."""
    return lambda shape, dtype: torch.empty(tuple(shape), dtype=dtype, device=device)
