"""Plots and ``summary.md`` of a profile (``profile.parquet`` rows, see ``profile()``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..names import PROFILE_STATISTICS as STATISTICS
from .keys import write_key_plot
from .panels import position_panels
from .sink_tokens import TABLE as SINK_TABLE
from .sink_tokens import summary_lines as sink_lines
from .writer import atomic_write_text

KEYS = ("layer", "head", "bin", "pos_lo", "pos_hi")
LABELS = {
    "sink": "attention on the first token",
    "previous_token": "attention on the previous token",
    "induction": "token-match induction mass",
    "duplicate": "token-match duplicate mass",
    "entropy": "entropy (nats)",
    "distance": "expected attention distance (tokens)",
    "local": "mass on the local window",
    "top1_prob": "top-1 probability",
}


def statistic_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in STATISTICS if c in df.columns]


def pooled(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Query-weighted means of every statistic over documents (and whatever is not in ``by``),
    with the summed ``n_queries``. A NaN row makes its group's mean NaN (never a number that
    counts it as 0)."""
    stats = statistic_columns(df)
    w = df["n_queries"].to_numpy(dtype=float)
    tmp = df[list(by)].copy()
    tmp["n_queries"] = w
    for c in stats:
        tmp[c] = df[c].to_numpy(dtype=float) * w
    groups = tmp.groupby(list(by), sort=True)
    g = groups.sum().reset_index()
    has_nan = groups[stats].count().reset_index(drop=True) < groups.size().reset_index(drop=True).to_numpy()[:, None]
    for c in stats:
        g[c] = (g[c] / g["n_queries"]).mask(has_nan[c].to_numpy())
    return g


def write_plots(df: pd.DataFrame, out: Path) -> list[Path]:
    """``position_<stat>.png`` (one panel per layer, one line per head, against query position)
    and ``heads.png`` (layer x head maps of every statistic over all positions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    by_bin = pooled(df, KEYS)
    layers = sorted(by_bin["layer"].unique())
    heads = sorted(by_bin["head"].unique())
    n_docs = df["doc_index"].nunique() if "doc_index" in df else 1
    for stat in statistic_columns(df):
        written.append(position_panels(
            by_bin, stat, xlabel="query position (tokens from the first)", ylabel=stat, path=out / f"position_{stat}.png",
            title=f"{LABELS.get(stat, stat)} vs query position ({n_docs} documents, query-weighted means)",
            # distance: tokens, spanning orders of magnitude like the positions
            yscale={"value": "symlog", "linthresh": 1} if stat == "distance" else None))

    per_head = pooled(df, ("layer", "head"))
    stats = statistic_columns(df)
    ncol = min(4, len(stats))
    nrow = math.ceil(len(stats) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(0.35 * len(heads) * ncol + 2.2 * ncol, 0.35 * len(layers) * nrow + 1.6 * nrow),
                             squeeze=False)
    for ax, stat in zip(axes.flat, stats):
        grid = per_head.pivot(index="layer", columns="head", values=stat).reindex(index=layers, columns=heads)
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="magma", origin="lower")
        ax.set_title(stat, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)))
        ax.set_yticks(range(len(layers)))
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046)
        if len(heads) * len(layers) <= 64:
            for (r, c), v in np.ndenumerate(grid.to_numpy()):
                ax.text(c, r, f"{v:.3g}" if abs(v) >= 1 else f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < np.nanmean(grid) else "k")
    for ax in axes.flat[len(stats):]:
        ax.axis("off")
    fig.suptitle("every head, all query positions (query-weighted means)", fontsize=10)
    fig.tight_layout()
    path = out / "heads.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    if "key_attention" in df.columns:  # the opt-in key statistic (profiling/keys.py)
        written.append(write_key_plot(df, out))
    return written


def write_summary(df: pd.DataFrame, root: Path, settings: dict, failures: dict, elapsed_s: float,
                  sinks: Optional[pd.DataFrame] = None) -> Path:
    """``summary.md``: the run, per-layer means at short and long range, the extreme heads, and with
    ``key_attention`` the secondary sinks (``sinks``: ``sink_tokens.merge_sums``)."""
    stats = statistic_columns(df)
    docs = df.drop_duplicates("doc_index")
    lines = [
        "# Attention profile",
        "",
        f"- model: `{settings.get('model')}`" + (f" revision `{settings['revision']}`" if settings.get("revision") else ""),
        f"- documents: {len(docs)} profiled, {len(failures)} failed"
        + (" (see failures.json)" if failures else "") + f"; tokens: {int(docs['n_tokens'].sum())} "
        f"(longest {int(docs['n_tokens'].max())}, truncated to {settings.get('max_tokens')})",
        f"- statistics: {', '.join(settings.get('statistics') or stats)}; local window {settings.get('local_window')}; "
        f"tokenizer {settings.get('tokenizer')}; dtype {settings.get('dtype')}",
        f"- time: {elapsed_s:.1f} s of profiling",
        "",
        "## Per layer (mean over heads), by query position",
        "",
    ]
    by_bin = pooled(df, ("layer", "bin", "pos_lo", "pos_hi"))
    header = "| layer | positions | queries | " + " | ".join(stats) + " |"
    lines += [header, "|" + "---|" * (3 + len(stats))]
    for _, r in by_bin.iterrows():
        hi = "inf" if int(r["pos_hi"]) < 0 else str(int(r["pos_hi"]))
        # n_queries summed over heads: divide back to queries per head
        n_heads = df["head"].nunique()
        lines.append(f"| {int(r['layer'])} | [{int(r['pos_lo'])}, {hi}) | {int(r['n_queries'] / n_heads)} | "
                     + " | ".join(f"{r[c]:.3f}" for c in stats) + " |")
    per_head = pooled(df, ("layer", "head"))
    lines += ["", "## Extreme heads (all positions)", ""]
    for c in stats:
        top = per_head.nlargest(3, c)
        nan = per_head[per_head[c].isna()]
        lines.append(f"- highest {c}: " + ", ".join(f"L{int(r.layer)}H{int(r.head)} {getattr(r, c):.3f}"
                                                    for r in top.itertuples())
                     + (f" (NaN: {', '.join(f'L{int(r.layer)}H{int(r.head)}' for r in nan.itertuples())})"
                        if len(nan) else ""))
    lines += [""]
    keys = "key_attention" in df.columns
    if keys:
        lines += sink_lines(sinks, settings["sink_eps"], settings["sink_min_queries"],
                            len(df[["layer", "head"]].drop_duplicates()))
    lines += ["Plots: `plots/position_<statistic>.png` (per layer, each head against query position) and "
              "`plots/heads.png` (layer x head maps)" + (", `plots/key_position_attention.png`" if keys else "")
              + ". Rows: `profile.parquet`" + (f"; sinks per token id: `{SINK_TABLE}`" if keys else "") + ".", ""]
    path = Path(root) / "summary.md"
    atomic_write_text(path, "\n".join(lines))
    return path
