"""What a ``record()`` block computes: ``RecordOptions``, validated once when the block opens.

Per-forward data (token ids, query masks, probe keys, a span) are inputs, not options: they go to
``Recording.set_inputs``. The options map onto one ``kernels.request.StatsRequest`` (the
statistics every attention call computes) with :meth:`RecordOptions.stats_request`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from ..kernels.dispatch import check_bool
from ..kernels.request import StatsRequest
from ..kernels.side_inputs import SideInputs, check_offsets
from .positions import BinSpec, bin_edges

# StatsRequest fields that belong to each attention layer (transformers passes them per call), not
# to the recording: the attention function gives them to the kernel itself.
LAYER_FIELDS = ("scale", "window", "softcap", "sinks")
BOOLEAN_OPTIONS = ("token_match", "entropy", "per_sample", "distance", "top1", "key_mass")


@dataclass(frozen=True)
class RecordOptions:
    """The statistics of a ``record()`` block (each documented there).

    ``offsets`` becomes a tuple of ints >= 0, ``position_bins`` and ``key_bins`` their bin edges
    (tuples of floats, or None); every other option is checked as given. A bad value raises a TypeError or
    ValueError naming the option, before any forward."""

    offsets: tuple[int, ...] = ()
    token_match: bool = False
    entropy: bool = False
    per_sample: bool = False
    position_bins: Optional[BinSpec] = None
    distance: bool = False
    local_window: Optional[int] = None
    top1: bool = False
    key_mass: bool = False
    key_bins: Optional[BinSpec] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", check_offsets(self.offsets))
        for name in BOOLEAN_OPTIONS:
            check_bool(name, getattr(self, name))
        for name in ("position_bins", "key_bins"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, bin_edges(getattr(self, name), name))
        if self.key_bins is not None and not self.key_mass:
            raise ValueError("key_bins bins the key mass: pass key_mass=True with it")
        window = self.local_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"local_window must be an int >= 1 (keys i - W < j <= i), got {window!r}")

    def stats_request(self) -> StatsRequest:
        """The kernel request of these statistics. Its ``LAYER_FIELDS`` (scale and the score
        modifiers) are placeholders: each layer's own come with its attention call."""
        return StatsRequest(scale=1.0, offsets=self.offsets, entropy=self.entropy, distance=self.distance,
                            local_window=self.local_window, top1=self.top1, key_mass=self.key_mass)


def kernel_arguments(request: StatsRequest, side: SideInputs) -> dict:
    """``attention_with_stats`` keyword arguments for ``request``'s statistics and ``side``
    (every ``StatsRequest`` field but ``LAYER_FIELDS``, which the layer passes)."""
    statistics = {f.name: getattr(request, f.name) for f in fields(request) if f.name not in LAYER_FIELDS}
    return dict(statistics, side_inputs=side)
