"""Emergence analytics and the scan report (``summary.json``, ``summary.md``, PNG plots)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .labels import FIRST_TOKEN, INDUCTION, UNCLASSIFIED  # noqa: E402
from .protocols import PROTOCOLS  # noqa: E402
from .scan import _atomic_write, _write_json, class_fractions, largest_jump  # noqa: E402

DEFAULT_SCREENS = {"induction_min_heads": 3, "first_token_min_fraction": 0.5, "recall_target": 2 / 3}


# ---------------------------------------------------------------- per-revision views
def revisions_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per scanned revision in training order: revision, step, tokens."""
    cols = ["revision", "step", "tokens"]
    return results[cols].drop_duplicates("revision").sort_values(["step", "revision"]).reset_index(drop=True)


def induction_heads(rows: pd.DataFrame) -> set[tuple[int, int]]:
    """Heads counted as induction heads: the protocol's induction flag (xu2026: the >= 50x
    screen) when it declares one, else the label."""
    protocol = PROTOCOLS.get(str(rows["protocol"].iloc[0])) if "protocol" in rows and len(rows) else None
    flag_col = protocol.induction_flag if protocol else None
    flag = rows[flag_col] if flag_col in rows else rows["label"] == INDUCTION
    return {(int(r.layer), int(r.head)) for r, f in zip(rows.itertuples(), flag) if f}


def _rev_info(revs: pd.DataFrame, revision: str) -> dict:
    row = revs[revs.revision == revision].iloc[0]
    return {"revision": revision, "step": int(row.step), "tokens": None if pd.isna(row.tokens) else int(row.tokens)}


def _first(revs: pd.DataFrame, passes) -> Optional[dict]:
    for rev in revs.revision:
        if passes(rev):
            return _rev_info(revs, rev)
    return None


def summarise(results: pd.DataFrame, screens: Optional[dict] = None) -> dict:
    """Onsets, sharpest jumps, onset ratio, early-screen recall and sink-free layers."""
    if results.empty:
        raise ValueError("no finished revisions to summarise")
    sc = {**DEFAULT_SCREENS, **(screens or {})}
    revs = revisions_table(results)
    by_rev = {r: g for r, g in results.groupby("revision")}
    frac = class_fractions(results)
    frac.index = [r for _, r in frac.index]
    n_heads = len(by_rev[revs.revision.iloc[0]])
    total_tokens = revs.tokens.dropna().max() if revs.tokens.notna().any() else None

    classes: dict = {}
    for label in [c for c in frac.columns if c != UNCLASSIFIED]:
        jump = largest_jump(results, label=label)
        if jump:
            jump = {"before": _rev_info(revs, jump["before"]), "after": _rev_info(revs, jump["after"]),
                    "fraction_before": jump["fraction_before"], "fraction_after": jump["fraction_after"]}
        classes[label] = {"fraction": {r: float(frac.loc[r, label]) for r in revs.revision}, "sharpest_jump": jump}

    ind_onset = _first(revs, lambda r: len(induction_heads(by_rev[r])) >= sc["induction_min_heads"])
    sink_onset = _first(revs, lambda r: FIRST_TOKEN in frac.columns
                        and frac.loc[r, FIRST_TOKEN] >= sc["first_token_min_fraction"])
    classes.setdefault(INDUCTION, {"fraction": {}, "sharpest_jump": None})["onset"] = ind_onset
    classes.setdefault(FIRST_TOKEN, {"fraction": {}, "sharpest_jump": None})["onset"] = sink_onset

    ratio = None
    if ind_onset and sink_onset and ind_onset["tokens"] and sink_onset["tokens"]:
        ratio = sink_onset["tokens"] / ind_onset["tokens"]

    final = induction_heads(by_rev[revs.revision.iloc[-1]])
    recall = {r: (len(induction_heads(by_rev[r]) & final) / len(final) if final else None) for r in revs.revision}
    first_recall = _first(revs, lambda r: recall[r] is not None and recall[r] >= sc["recall_target"])
    if first_recall and total_tokens and first_recall["tokens"] is not None:
        first_recall["fraction_of_total_tokens"] = first_recall["tokens"] / float(total_tokens)

    layers = sorted(results.layer.unique().tolist())
    sink_layers = set(results.loc[results.label == FIRST_TOKEN, "layer"].unique().tolist())
    return {
        "model": str(results.model.iloc[0]),
        "protocol": str(results.protocol.iloc[0]),
        "n_revisions": len(revs),
        "n_heads": int(n_heads),
        "screens": sc,
        "revisions": [_rev_info(revs, r) for r in revs.revision],
        "classes": classes,
        "induction_to_sink_onset_ratio_tokens": ratio,
        "final_induction_circuit": sorted([list(h) for h in final]),
        "early_screen_recall": {"per_revision": recall, "first_reaching_target": first_recall},
        "layers_never_first_token": [int(x) for x in layers if x not in sink_layers],
    }


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
    protocol = PROTOCOLS.get(summary["protocol"])
    col = protocol.induction_score if protocol else None
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
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
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
    _write_json(out / "summary.json", _jsonable(summary))
    _atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(markdown(summary, plots)))
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
