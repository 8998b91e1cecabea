"""The opt-in ``key_attention`` statistic of a profile: the attention received per bin of *key*
position (Gu et al.'s ``alpha_k``, pooled over the bin's keys), and its plot.

A document's rows (one per layer, head and position bin) gain ``key_mass`` (the attention the
bin's keys received, summed over the document's queries), ``key_pairs`` (the (query, key) pairs
that could carry it: every query at or after each key) and ``key_attention`` (their ratio).
Pooled over documents, ``key_attention`` is ``sum(key_mass) / sum(key_pairs)``. The recording
keeps every key position (the per-token sink table needs each key's ``alpha_k``,
``sink_tokens``); the bins are summed here, on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from ..models.key_mass import key_slots
from ..names import PROFILE_KEY_STATISTICS
from .panels import position_panels

KEY_SUMS = ("key_mass", "key_pairs")


def key_options(statistics: Sequence[str]) -> dict:
    """``record()`` arguments of the key statistics in ``statistics`` (none: ``{}``): the key mass
    of every key position (binned by ``add_key_columns``)."""
    return {"key_mass": True} if records_keys(statistics) else {}


def records_keys(statistics: Sequence[str]) -> bool:
    """Whether ``statistics`` asks for the attention received per key."""
    return bool(set(statistics) & set(PROFILE_KEY_STATISTICS))


def key_sums(statistics: Sequence[str]) -> tuple[str, ...]:
    """The extra columns a profile keeps to pool ``key_attention`` over documents."""
    return KEY_SUMS if records_keys(statistics) else ()


def by_bin(values: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """``values [..., positions]`` float64 summed per bin of position ``[..., bins]``."""
    n_bins = len(edges) - 1
    slots = key_slots(torch.arange(values.shape[-1]), list(edges), n_bins)
    out = torch.zeros(*values.shape[:-1], n_bins + 1, dtype=torch.float64)
    return out.index_add_(-1, slots, values.double())[..., :n_bins]


def add_key_columns(df: pd.DataFrame, rec) -> pd.DataFrame:
    """``df`` (``rec.summary()`` rows: layer, head, bin) with ``key_mass``, ``key_pairs`` and
    ``key_attention`` of one document's recording, when it recorded the key mass (per position:
    summed here into the recording's position bins)."""
    if rec.options.key_mass is False:
        return df
    edges = rec.options.position_bins
    mass = by_bin(rec.tensors()["key_mass"], edges)  # [L, H, bins]: one document, the mean is its sum
    pairs = by_bin(rec.key_queries(), edges)  # [L, bins]
    layer, head, b = (torch.as_tensor(df[c].to_numpy(copy=True)) for c in ("layer", "head", "bin"))
    out = df.copy()
    out["key_mass"] = mass[layer, head, b].numpy()
    out["key_pairs"] = pairs[layer, b].numpy()
    out["key_attention"] = out["key_mass"] / out["key_pairs"]
    return out


def pooled_key_attention(df: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, head, bin, pos_lo, pos_hi): ``key_attention`` pooled over documents."""
    g = df.groupby(["layer", "head", "bin", "pos_lo", "pos_hi"], sort=True)[list(KEY_SUMS)].sum().reset_index()
    g["key_attention"] = g["key_mass"] / g["key_pairs"]
    return g


def write_key_plot(df: pd.DataFrame, out: Path) -> Path:
    """``key_position_attention.png``: per layer, each head's pooled ``key_attention`` against
    key position (a step per bin; log scale: the first keys and the far ones both show)."""
    n_docs = df["doc_index"].nunique() if "doc_index" in df else 1
    return position_panels(
        pooled_key_attention(df), "key_attention", xlabel="key position (tokens from the first)",
        ylabel="attention received per query", path=Path(out) / "key_position_attention.png",
        title=f"attention received vs key position ({n_docs} documents; alpha_k pooled per bin)", yscale={"value": "log"})
