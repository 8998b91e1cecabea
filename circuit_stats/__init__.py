"""circuit-stats: which attention heads do what, and when in training they started doing it.

Importing the package registers ``attn_implementation="circuit_stats"`` with transformers.
"""

from .kernels import AttentionStats, attention_with_stats
from .models import record
from .profiling import profile
from .scoring import score_heads

__version__ = "0.1.0"
__all__ = ["AttentionStats", "attention_with_stats", "profile", "record", "score_heads", "__version__"]
