"""Statistics over evaluations: lm-evaluation-harness tasks with per-head statistics per document.

``evaluate(model, tasks, ...)`` (in ``harness``; also ``circuit-stats eval``, ``cli``) runs tasks through lm-eval's own
``simple_evaluate`` with ``RecordingHFLM`` (in ``recording_lm``; lm-eval's Hugging Face model,
each request run alone inside ``record()``); the resumable output directory is in ``store``, the
per-document tables in ``tables``, ``summary.md`` and plots in ``report``. Needs the ``eval``
extra (``pip install 'circuit-stats[eval]'``).
"""

__all__ = ["evaluate"]


def __getattr__(name: str):
    """``evaluate`` on first use, so that the command line's parser imports no torch."""
    if name == "evaluate":
        from .harness import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
