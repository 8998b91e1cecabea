"""Head-scoring protocols. Each module has ``DEFAULTS`` and ``score(model, ...) -> DataFrame``."""

from . import natural, repeat, sink, xu2026

PROTOCOLS = {"xu2026": xu2026, "repeat": repeat, "sink": sink, "natural": natural}

__all__ = ["PROTOCOLS", "natural", "repeat", "sink", "xu2026"]
