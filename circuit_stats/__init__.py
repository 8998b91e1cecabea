"""circuit-stats: which attention heads do what, and when in training they started doing it."""

from .kernels import AttentionStats, attention_with_stats

__version__ = "0.1.0"
__all__ = ["AttentionStats", "attention_with_stats", "__version__"]
