"""Hugging Face integration (``attn_implementation="circuit_stats"``) and per-family facts."""

from .attention import IMPLEMENTATION, circuit_stats_attention, circuit_stats_mask, get_backend, register, set_backend
from .families import FAMILIES, TINY_CONFIGS, tiny_model
from .recording import Recording, record

register()

__all__ = [
    "FAMILIES",
    "IMPLEMENTATION",
    "Recording",
    "TINY_CONFIGS",
    "circuit_stats_attention",
    "circuit_stats_mask",
    "get_backend",
    "record",
    "register",
    "set_backend",
    "tiny_model",
]
