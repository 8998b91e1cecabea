"""One panel per layer, one step curve per head, against the position bins of a profile."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd


def bin_end(d: pd.DataFrame) -> float:
    """Where the last bin of ``d`` ends on the plot (an open bin: twice its start)."""
    hi = int(d["pos_hi"].to_numpy()[-1])
    lo = int(d["pos_lo"].to_numpy()[-1])
    return hi if hi > 0 else 2 * max(lo, 1)


def position_panels(by_bin: pd.DataFrame, column: str, *, xlabel: str, ylabel: str, title: str, path: Path,
                    yscale: Optional[dict] = None) -> Path:
    """Plot ``column`` of ``by_bin`` (rows ``layer, head, bin, pos_lo, pos_hi``): each bin's value
    spans ``[pos_lo, pos_hi)``, a step curve on a symlog position axis; ``yscale``: keyword
    arguments of ``Axes.set_yscale`` (None: linear). Writes ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = sorted(by_bin["layer"].unique()), sorted(by_bin["head"].unique())
    cmap = plt.get_cmap("viridis")
    ncol = min(4, len(layers))
    nrow = math.ceil(len(layers) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False, sharex=True, sharey=True)
    for ax, layer in zip(axes.flat, layers):
        sub = by_bin[by_bin["layer"] == layer]
        for h in heads:
            d = sub[sub["head"] == h].sort_values("bin")
            if d.empty:
                continue
            x = np.append(d["pos_lo"].to_numpy(), bin_end(d))
            y = np.append(d[column].to_numpy(), d[column].to_numpy()[-1])
            ax.step(x, y, where="post", color=cmap(h / max(1, len(heads) - 1)), lw=1.2, label=f"head {h}")
        ax.set_xscale("symlog", linthresh=1)
        if yscale is not None:
            ax.set_yscale(**yscale)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if len(heads) <= 16:  # one legend for all panels, right of them
        fig.subplots_adjust(right=0.86)
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="center right", fontsize=7, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
