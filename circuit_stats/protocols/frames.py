"""Result-frame helpers: one row per (layer, head)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def head_frame(n_layers: int, n_heads: int) -> pd.DataFrame:
    """``layer`` and ``head`` columns, layer-major (the order of ``t.reshape(-1)`` for ``t [L, H]``)."""
    return pd.DataFrame({
        "layer": [layer for layer in range(n_layers) for _ in range(n_heads)],
        "head": [h for _ in range(n_layers) for h in range(n_heads)],
    })


def flat(t: torch.Tensor) -> np.ndarray:
    """``[L, H]`` tensor -> float64 column in :func:`head_frame` order."""
    return t.reshape(-1).double().numpy()
