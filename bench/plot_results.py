"""Plot TFLOP/s vs N per variant from a kernel benchmark JSON (one panel per dtype x D).

    python -m bench.plot_results bench/results/kernel-<device>-<date>.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(json_path: Path, out: Path | None = None) -> Path:
    data = json.loads(Path(json_path).read_text())
    rows = [r for r in data["results"] if r.get("status") == "ok"]
    panels = sorted({(r["dtype"], r["D"]) for r in rows})
    if not panels:
        raise ValueError(f"{json_path}: no successful rows to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (dtype, D) in zip(axes[0], panels):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            pts = sorted((r["N"], r["tflops"]) for r in rows if r["variant"] == variant and r["dtype"] == dtype and r["D"] == D)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (tokens)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"{dtype}, D={D}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    env = data["environment"]
    fig.suptitle(f"causal attention forward on {env['device']} ({env['date']})", fontsize=10)
    fig.tight_layout()
    out = Path(out or Path(json_path).with_suffix(".png"))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(plot(Path(sys.argv[1])))
