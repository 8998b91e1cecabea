"""Hugging Face integration (``attn_implementation="circuit_stats"``) and per-family facts."""

from .attention import (
    circuit_stats_attention,
    circuit_stats_mask,
    register,
    set_backend,
)
from .families import TINY_CONFIGS, tiny_model
from .recording import (
    IMPLEMENTATION,
    Recording,
    offset_column,
    probe_column,
    record,
    uses_circuit_stats,
)

register()

__all__ = [
    "IMPLEMENTATION",
    "Recording",
    "TINY_CONFIGS",
    "circuit_stats_attention",
    "circuit_stats_mask",
    "record",
    "register",
    "set_backend",
    "offset_column",
    "probe_column",
    "tiny_model",
    "uses_circuit_stats",
]
