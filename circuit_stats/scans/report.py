"""The scan report: ``summary.json``, ``summary.md`` and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..labels import INDUCTION  # noqa: E402
from ..protocols import get_protocol  # noqa: E402
from .emergence import revisions_table, split_duplicates, summarise  # noqa: E402
from .files import atomic_write, write_json  # noqa: E402

# ---------------------------------------------------------------- plots
def _x(revs: pd.DataFrame) -> tuple[np.ndarray, str]:
    if revs.tokens.notna().all():
        return revs.tokens.to_numpy(dtype=float), "tokens"
    return revs.step.to_numpy(dtype=float), "step"


def _log_axis(ax, x) -> None:
    positive = x[x > 0]
    if len(positive):
        ax.set_xscale("symlog", linthresh=float(positive.min()))


def plot_fractions(summary: dict, revs: pd.DataFrame, path: Path) -> None:
    x, xlabel = _x(revs)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, info in summary["classes"].items():
        if info["fraction"]:
            ax.plot(x, [info["fraction"][r] for r in revs.revision], marker="o", ms=3, label=label)
    _log_axis(ax, x)
    ax.set_xlabel(f"{xlabel} (log)")
    ax.set_ylabel("fraction of heads")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{summary['model']}: head classes over training ({summary['protocol']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_heatmaps(results: pd.DataFrame, revisions: list[str], path: Path) -> None:
    labels = sorted(results.label.unique())
    code = {lab: i for i, lab in enumerate(labels)}
    n_layers, n_heads = int(results.layer.max()) + 1, int(results["head"].max()) + 1
    fig, axes = plt.subplots(1, len(revisions), figsize=(3.2 * len(revisions), 0.35 * n_layers + 1.6), squeeze=False)
    cmap = plt.get_cmap("tab10", max(len(labels), 2))
    for ax, rev in zip(axes[0], revisions):
        g = results[results.revision == rev]
        grid = np.full((n_layers, n_heads), np.nan)
        grid[g.layer.to_numpy(), g["head"].to_numpy()] = [code[lab] for lab in g.label]
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=max(len(labels), 2) - 0.5, aspect="auto")
        ax.set_title(rev, fontsize=8)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(code[lab])) for lab in labels]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    _save(fig, path)


def plot_trajectories(results: pd.DataFrame, summary: dict, revs: pd.DataFrame, path: Path) -> bool:
    col = get_protocol(summary["protocol"]).induction_score
    heads = summary["final_induction_circuit"]
    if col is None or col not in results or not heads:
        return False
    x, xlabel = _x(revs)
    fig, ax = plt.subplots(figsize=(7, 4))
    for layer, head in heads:
        g = results[(results.layer == layer) & (results["head"] == head)].set_index("revision").reindex(revs.revision)
        ax.plot(x, g[col].to_numpy(dtype=float), marker="o", ms=3, label=f"L{layer}H{head}")
    _log_axis(ax, x)
    if col.startswith("sel_"):
        ax.set_yscale("log")
    ax.set_xlabel(f"{xlabel} (log)")
    ax.set_ylabel(col)
    ax.set_title("final induction circuit: per-head score over training", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------- markdown
def _fmt_rev(info: Optional[dict]) -> str:
    if not info:
        return "not reached"
    tok = f", {info['tokens']:,} tokens" if info.get("tokens") is not None else ""
    return f"`{info['revision']}` (step {info['step']:,}{tok})"


def markdown(summary: dict, plots: list[str]) -> str:
    sc = summary["screens"]
    lines = [f"# circuit-stats report: {summary['model']}", "",
             f"Protocol `{summary['protocol']}`, {summary['n_revisions']} revisions, {summary['n_heads']} heads each.", "",
             "## Onsets", "",
             f"- induction (>= {sc['induction_min_heads']} induction heads): {_fmt_rev(summary['classes']['induction']['onset'])}",
             f"- first-token (>= {sc['first_token_min_fraction']:.0%} of heads): {_fmt_rev(summary['classes']['first-token']['onset'])}"]
    ratio = summary["induction_to_sink_onset_ratio_tokens"]
    lines.append(f"- first-token onset / induction onset, in tokens: {ratio:.1f}x" if ratio else
                 "- first-token onset / induction onset: not defined (an onset was not reached)")
    lines += ["", "## Sharpest jumps", "", "| class | before | after | fraction |", "|---|---|---|---|"]
    for label, info in summary["classes"].items():
        j = info.get("sharpest_jump")
        if j:
            lines.append(f"| {label} | {_fmt_rev(j['before'])} | {_fmt_rev(j['after'])} | "
                         f"{j['fraction_before']:.3f} -> {j['fraction_after']:.3f} |")
    rec = summary["early_screen_recall"]["first_reaching_target"]
    lines += ["", "## Early screen", "",
              f"Final induction circuit: {len(summary['final_induction_circuit'])} heads "
              f"{[f'L{a}H{b}' for a, b in summary['final_induction_circuit']]}.",
              f"First revision recovering >= {sc['recall_target']:.0%} of it: {_fmt_rev(rec)}"
              + (f", {rec['fraction_of_total_tokens']:.2%} of the scanned tokens." if rec and rec.get("fraction_of_total_tokens") is not None else "."),
              "", f"Layers that never hold a first-token head: {summary['layers_never_first_token']}", "",
              "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(scan_dir: Union[str, Path], out: Optional[Union[str, Path]] = None,
                 screens: Optional[dict] = None) -> dict:
    """Read ``scan_dir/results.parquet`` and write the report into ``out`` (default
    ``scan_dir/report``). Returns the summary."""
    scan_dir = Path(scan_dir)
    table = scan_dir / "results.parquet"
    if not table.exists():
        raise FileNotFoundError(f"{table} not found: run `circuit-stats scan` first")
    results = pd.read_parquet(table)
    out = Path(out) if out else scan_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, screens)
    results, _ = split_duplicates(results)
    revs = revisions_table(results)
    plots = ["class_fractions.png"]
    plot_fractions(summary, revs, out / plots[0])
    names = list(revs.revision)
    transition = summary["classes"][INDUCTION].get("sharpest_jump") or next(
        (c["sharpest_jump"] for c in summary["classes"].values() if c.get("sharpest_jump")), None)
    picks = [names[0]] + ([transition["before"]["revision"], transition["after"]["revision"]] if transition else []) + [names[-1]]
    plot_heatmaps(results, list(dict.fromkeys(picks)), out / "heatmaps.png")
    plots.append("heatmaps.png")
    if plot_trajectories(results, summary, revs, out / "induction_trajectories.png"):
        plots.append("induction_trajectories.png")
    summary["plots"] = plots
    write_json(out / "summary.json", _jsonable(summary))
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(markdown(summary, plots)))
    return summary


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) else float(obj)
    return obj
