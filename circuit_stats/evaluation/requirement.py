"""Whether lm-evaluation-harness is installed, checked without importing it (no torch)."""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'circuit-stats[eval]'  (lm-evaluation-harness, lm-eval 0.4)"


def require_lm_eval() -> None:
    """Raise ``ValueError`` saying how to install lm-eval when it is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError(f"evaluations need lm-evaluation-harness, which is not installed: {INSTALL_HINT}")
