"""Statistics over evaluations: lm-evaluation-harness tasks with per-head statistics per document.

``evaluate(model, tasks, ...)`` (also ``circuit-stats eval``) runs tasks through lm-eval's own
``simple_evaluate`` with ``RecordingHFLM`` (in ``recording_lm``; lm-eval's Hugging Face model,
each request run alone inside ``record()``); the resumable output directory is in ``store``, the
per-document tables in ``tables``, ``summary.md`` and plots in ``report``. Needs the ``eval``
extra (``pip install 'circuit-stats[eval]'``).
"""

from .evaluate import evaluate

__all__ = ["evaluate"]
