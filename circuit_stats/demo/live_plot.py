"""The README's live-monitoring figure: the demo's live table (every 10 steps, written during
training by ``circuit_stats.training.Monitor``) against scoring its saved checkpoints afterwards.

    python -m circuit_stats.demo.live_plot --out docs/images/live_demo_induction.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..labels import INDUCTION  # noqa: E402
from .series import DEMO_REPEAT_OPTIONS, demo_series_dir  # noqa: E402


def live_series_dir() -> Path:
    """The bundled live table of the demo run (``<demo_series>_live``)."""
    d = demo_series_dir()
    return d.parent / f"{d.name}_live"


def score_checkpoints(series: Path) -> pd.DataFrame:
    """Every ``checkpoint-{step}`` of ``series`` scored offline with the demo's repeat options."""
    from transformers import AutoModelForCausalLM

    from ..scoring import score_heads

    frames = []
    for ckpt in sorted(series.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        model = AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="circuit_stats", dtype="float32")
        df = score_heads(model, "repeat", progress=False, **DEMO_REPEAT_OPTIONS)
        df.insert(0, "step", int(ckpt.name.split("-")[1]))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def plot(live: pd.DataFrame, checkpoints: pd.DataFrame, path: Path, window: tuple[int, int] = (900, 1300)) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex="col", gridspec_kw={"height_ratios": [2, 1]})
    layer = int(live.layer.max())
    heads = sorted(live[live.layer == layer]["head"].unique())
    for col, xlim in enumerate([None, window]):
        top, bottom = axes[0, col], axes[1, col]
        for h, color in zip(heads, plt.cm.tab10.colors):
            lv = live[(live.layer == layer) & (live["head"] == h)]
            ck = checkpoints[(checkpoints.layer == layer) & (checkpoints["head"] == h)]
            top.plot(lv.step, lv.induction_offset, "-", lw=1.2, color=color, label=f"L{layer}H{h} live (every 10 steps)")
            top.plot(ck.step, ck.induction_offset, "o", ms=5, mfc="none", color=color, label=f"L{layer}H{h} checkpoints")
        top.axhline(0.4, color="grey", ls=":", lw=1)
        top.set_ylabel("repeat-protocol induction score")
        n_live = live.groupby("step").label.apply(lambda s: (s == INDUCTION).sum())
        n_ck = checkpoints.groupby("step").label.apply(lambda s: (s == INDUCTION).sum())
        bottom.step(n_live.index, n_live.values, where="post", color="k", lw=1.2, label="live")
        bottom.plot(n_ck.index, n_ck.values, "o", mfc="none", color="C3", label="saved checkpoints")
        bottom.set_ylabel("induction heads")
        bottom.set_xlabel("training step")
        if xlim:
            top.set_xlim(*xlim)
            top.set_title(f"transition window, steps {xlim[0]}-{xlim[1]}")
        else:
            top.set_title("whole run (threshold 0.4 dotted)")
    axes[0, 0].legend(fontsize=6.5, ncol=2, loc="upper left")
    axes[1, 0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Demo run watched live (circuit_stats.training.Monitor, every 10 steps) vs the bundled checkpoints scored afterwards")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="PNG path")
    p.add_argument("--live", type=Path, default=None, help="live table directory (default: the bundled one)")
    p.add_argument("--series", type=Path, default=None, help="checkpoint series (default: the bundled one)")
    a = p.parse_args(argv)
    live = pd.read_parquet((a.live or live_series_dir()) / "results.parquet")
    print(plot(live, score_checkpoints(a.series or demo_series_dir()), a.out))


if __name__ == "__main__":
    main()
