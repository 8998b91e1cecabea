"""Fused attention-with-statistics kernels and their PyTorch references.

* ``attention_with_stats`` -- the public entry point (Triton on CUDA, chunked torch on CPU).
* ``naive.attention_with_stats_naive`` -- materialised definition, for tests only.
* ``pin_config`` -- fix a Triton kernel's tile config instead of autotuning (``pinning``).

Set ``TRITON_INTERPRET=1`` before importing to run the Triton kernel on the CPU.
"""

from .dispatch import SUPPORTED_DTYPES, attention_with_stats
from .naive import attention_with_stats_naive, stats_from_probabilities
from .pinning import pin_config
from .side_inputs import SideInputs
from .stats import AttentionStats

__all__ = [
    "AttentionStats",
    "SideInputs",
    "attention_with_stats",
    "attention_with_stats_naive",
    "pin_config",
    "stats_from_probabilities",
    "SUPPORTED_DTYPES",
]
