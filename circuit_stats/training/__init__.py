"""Watch attention heads form during your own training run.

``CircuitStatsCallback`` for the transformers ``Trainer``, ``Monitor`` for plain PyTorch loops;
both write ``DIR/results.parquet`` in the checkpoint-scan format (``circuit-stats report DIR``).
"""

from .callback import DEFAULT_EVERY, CircuitStatsCallback
from .monitor import Monitor, metrics
from .results import LiveResults
from .scoring import score_live_model

__all__ = ["DEFAULT_EVERY", "CircuitStatsCallback", "LiveResults", "Monitor", "metrics", "score_live_model"]
