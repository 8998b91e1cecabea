"""Where the bundled demo series lives and the protocol options that fit it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The demo model was trained on printable ASCII bytes only: random tokens for the repeat
# protocol must come from that range, or they hit untrained embeddings.
DEMO_REPEAT_OPTIONS = {"vocab_range": (32, 127), "seq_len": 32, "n_sequences": 32}


def demo_series_dir() -> Path:
    """The bundled ``checkpoint-{step}`` folders (a few MB, float16)."""
    return Path(str(resources.files("circuit_stats").joinpath("data/demo_series")))
