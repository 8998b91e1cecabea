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

from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.ticker import EngFormatter, PercentFormatter  # noqa: E402

from .. import labels  # noqa: E402
from ..labels import FIRST_TOKEN, INDUCTION, UNCLASSIFIED  # noqa: E402
from ..protocols import get_protocol  # noqa: E402
from ..protocols.uncertainty import BORDERLINE_SE, se_column  # noqa: E402
from .emergence import (class_fractions, revisions_table, split_duplicates, split_non_finite, summarise,  # noqa: E402
                        with_labels)
from .files import atomic_write, read_json, write_json  # noqa: E402

# ---------------------------------------------------------------- plots
# One colour per head class everywhere; unclassified heads stay in the background.
CLASS_COLOURS = {labels.INDUCTION: "tab:blue", labels.PREVIOUS_TOKEN: "tab:orange", labels.DUPLICATE_TOKEN: "tab:green",
                 labels.FIRST_TOKEN: "tab:red", labels.SELF: "tab:purple", labels.LOCAL: "tab:brown",
                 labels.RETRIEVAL: "tab:cyan", labels.UNCLASSIFIED: "#d9d9d9"}
LOG_SPAN = 100  # a token axis spanning more than this ratio is drawn on a log scale (plus a linear zoom)
ZOOM_BELOW = 8  # on a linear axis, zoom on the sharpest jump when it is narrower than 1/8 of the axis


def display_name(model: str) -> str:
    """A hub id as is; a local checkpoint directory by its folder name (not an absolute path)."""
    return Path(model).name if Path(model).is_absolute() else model


def _x(revs: pd.DataFrame) -> tuple[np.ndarray, str]:
    if revs.tokens.notna().all():
        return revs.tokens.to_numpy(dtype=float), "tokens seen in training"
    return revs.step.to_numpy(dtype=float), "training step"


def _is_wide(x: np.ndarray) -> bool:
    positive = x[x > 0]
    return len(positive) > 1 and positive.max() / positive.min() > LOG_SPAN


def _token_axis(ax, x: np.ndarray, xlabel: str, log: bool) -> None:
    if log:
        ax.set_xscale("symlog", linthresh=float(x[x > 0].min()), linscale=0.5)
        ax.set_xlim(min(float(x.min()), 0.0), float(x.max()) * 1.5)
        lo, hi = math.ceil(math.log10(x[x > 0].min())), math.floor(math.log10(x.max()))
        ax.set_xticks(([0.0] if x.min() <= 0 else []) + [10.0**k for k in range(lo, hi + 1)])
        ax.set_xlabel(f"{xlabel} (log scale)")
    else:
        ax.set_xlabel(xlabel)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(True, alpha=0.3, lw=0.5)


def _x_of(revs: pd.DataFrame, x: np.ndarray, info: Optional[dict]) -> Optional[float]:
    if not info:
        return None
    where = np.flatnonzero(revs.revision.to_numpy() == info["revision"])
    return float(x[where[0]]) if len(where) else None


def _transition(summary: dict) -> Optional[dict]:
    """The induction jump, else the largest jump of any class."""
    jumps = [c["sharpest_jump"] for c in summary["classes"].values() if c.get("sharpest_jump")]
    own = summary["classes"].get(INDUCTION, {}).get("sharpest_jump")
    if own:
        return {**own, "label": INDUCTION}
    if not jumps:
        return None
    label, jump = max(((k, c["sharpest_jump"]) for k, c in summary["classes"].items() if c.get("sharpest_jump")),
                      key=lambda kv: abs(kv[1]["fraction_after"] - kv[1]["fraction_before"]))
    return {**jump, "label": label}


def _mark_events(ax, summary: dict, revs: pd.DataFrame, x: np.ndarray, text: bool = True) -> None:
    """Shade the sharpest jump and draw a dashed line at each onset."""
    jump = _transition(summary)
    if jump:
        lo, hi = _x_of(revs, x, jump["before"]), _x_of(revs, x, jump["after"])
        if lo is not None and hi is not None:
            ax.axvspan(lo, hi, color=CLASS_COLOURS.get(jump["label"], "grey"), alpha=0.15, lw=0,
                       label=f"sharpest {jump['label']} jump")
    for label in (INDUCTION, FIRST_TOKEN):
        onset = summary["classes"].get(label, {}).get("onset")
        at = _x_of(revs, x, onset)
        if at is not None:
            ax.axvline(at, color=CLASS_COLOURS[label], ls="--", lw=1, label=f"{label} onset ({onset['revision']})")


def _zoom(jump: Optional[dict], revs: pd.DataFrame, x: np.ndarray) -> Optional[tuple[float, float]]:
    if not jump:
        return None
    lo, hi = _x_of(revs, x, jump["before"]), _x_of(revs, x, jump["after"])
    if lo is None or hi is None:
        return None
    pad = max(hi - lo, 1.0) * 1.5
    lo, hi = max(lo - pad, float(x.min())), min(hi + pad, float(x.max()))
    margin = (hi - lo) * 0.04  # keep the end points' markers inside
    return lo - margin, hi + margin


def plot_fractions(summary: dict, results: pd.DataFrame, revs: pd.DataFrame, path: Path) -> None:
    """Share of heads per class over training, onsets and the sharpest jump marked; beside it a
    linear zoom on the jump when the axis is logarithmic or the jump is narrow."""
    x, xlabel = _x(revs)
    frac = class_fractions(results)
    frac.index = [r for _, r in frac.index]
    frac = frac.reindex(revs.revision).fillna(0.0)
    wide = _is_wide(x)
    zoom = _zoom(_transition(summary), revs, x)
    if zoom and not wide and (zoom[1] - zoom[0]) / 4 > (x.max() - x.min()) / ZOOM_BELOW:
        zoom = None  # a linear axis already resolves a jump this wide
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11 if zoom else 7.5, 4.8), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1]} if zoom else None)
    classified = [c for c in frac.columns if c != UNCLASSIFIED]
    for i, ax in enumerate(axes[0]):
        for label in classified + ([UNCLASSIFIED] if UNCLASSIFIED in frac else []):
            muted = label == UNCLASSIFIED
            ax.plot(x, frac[label].to_numpy(), marker="o", ms=2 if muted else 3, lw=1 if muted else 1.6,
                    color=CLASS_COLOURS.get(label, "black"), label=label, zorder=1 if muted else 3)
        _mark_events(ax, summary, revs, x)
        _token_axis(ax, x, xlabel, log=wide and i == 0)
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel("share of heads in the class")
        if i == 1:
            ax.set_xlim(*zoom)
            ax.set_title("zoom on the sharpest jump (linear axis)", fontsize=9)
    if not classified:
        axes[0][0].text(0.5, 0.5, f"no head passed any class threshold\nin these {len(revs)} revisions",
                        transform=axes[0][0].transAxes, ha="center", va="center", fontsize=11, color="0.3")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8)
    fig.suptitle(f"{display_name(summary['model'])}: head classes over training (protocol {summary['protocol']})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(names) / 4) + 0.02, 1, 1))
    save_figure(fig, path)


def plot_heatmaps(results: pd.DataFrame, panels: list[tuple[str, str]], summary: dict, path: Path) -> None:
    """Layer x head class maps at the given ``(revision, why)`` panels."""
    present = [c for c in CLASS_COLOURS if c in set(results.label)] + sorted(set(results.label) - set(CLASS_COLOURS))
    code = {lab: i for i, lab in enumerate(present)}
    cmap = ListedColormap([CLASS_COLOURS.get(lab, "black") for lab in present])
    n_layers, n_heads = int(results.layer.max()) + 1, int(results["head"].max()) + 1
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.35 * n_layers + 2.0), squeeze=False)
    for ax, (rev, why) in zip(axes[0], panels):
        g = results[results.revision == rev]
        grid = np.full((n_layers, n_heads), np.nan)
        grid[g.layer.to_numpy(), g["head"].to_numpy()] = [code[lab] for lab in g.label]
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(present) - 0.5, aspect="auto", interpolation="nearest")
        tokens = g.tokens.iloc[0] if len(g) else None
        tok = f"\n{EngFormatter(sep='')(float(tokens))} tokens" if tokens is not None and not pd.isna(tokens) else ""
        ax.set_title(f"{why}: {rev}{tok}", fontsize=8)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("head index")
        ax.set_ylabel("layer index")
    handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS.get(lab, "black")) for lab in present]
    fig.legend(handles, present, loc="lower center", ncol=min(len(present), 7), fontsize=8)
    fig.suptitle(f"{display_name(summary['model'])}: head classes by layer and head (protocol {summary['protocol']})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, path)


def plot_trajectories(results: pd.DataFrame, summary: dict, revs: pd.DataFrame, path: Path) -> bool:
    """The protocol's induction score of the final induction circuit's heads over training (of
    the four highest-scoring heads at the last revision when there is no circuit), with a band of
    +-1 standard error where the table has ``<score>_se``."""
    col = get_protocol(summary["protocol"]).induction_score
    if col is None or col not in results:
        return False
    heads = summary["final_induction_circuit"]
    title = "final induction circuit"
    if not heads:
        last = results[results.revision == revs.revision.iloc[-1]].nlargest(4, col)
        heads = [[int(a), int(b)] for a, b in zip(last.layer, last["head"])]
        title = "no induction circuit at the last revision; its 4 highest-scoring heads"
    x, xlabel = _x(revs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    values = []
    for layer, head in heads:
        g = results[(results.layer == layer) & (results["head"] == head)].set_index("revision").reindex(revs.revision)
        y = g[col].to_numpy(dtype=float)
        values.append(y)
        line, = ax.plot(x, y, marker="o", ms=3, label=f"L{layer}H{head}", zorder=3)
        if se_column(col) in g:  # +-1 standard error over the protocol's sampling unit
            se = g[se_column(col)].to_numpy(dtype=float)
            ax.fill_between(x, y - se, y + se, color=line.get_color(), alpha=0.2, lw=0, zorder=2)
    _mark_events(ax, summary, revs, x)
    _token_axis(ax, x, xlabel, log=_is_wide(x))
    v = np.concatenate(values) if values else np.array([])
    v = v[np.isfinite(v)]
    if len(v) and v.min() > 0 and v.max() / v.min() > LOG_SPAN:
        ax.set_yscale("log")
        ax.set_ylabel(f"{col} (log scale)")
    elif len(v) and v.min() >= 0 and v.max() <= 1:
        ax.set_ylabel(f"{col} (attention probability, 0-1)")
        ax.set_ylim(-0.03, 1.03)
    else:
        ax.set_ylabel(f"{col} (the protocol's induction score)")
    if se_column(col) in results:
        title += ", bands +-1 standard error"
    ax.set_title(f"{display_name(summary['model'])}: {title} (protocol {summary['protocol']})", fontsize=9)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(names) / 4) + 0.02, 1, 1))
    save_figure(fig, path)
    return True


def save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------- markdown
def _fmt_rev(info: Optional[dict]) -> str:
    if not info:
        return "not reached"
    tok = f", {info['tokens']:,} tokens" if info.get("tokens") is not None else ""
    return f"`{info['revision']}` (step {info['step']:,}{tok})"


def onset_noise_lines(interval: Optional[dict], label: str) -> list[str]:
    """An onset's interval and its change in standard errors, as Markdown bullets."""
    if not interval:
        return []
    if interval["before"] is None:
        return ["  - reached at the first scanned revision: no interval, no change to test"]
    lines = [f"  - lies between {_fmt_rev(interval['before'])} and {_fmt_rev(interval['after'])}"]
    z = interval.get("change_z")
    if z is None:
        lines.append("  - no standard errors in this table (scanned before they existed): noise not tested")
    elif z:
        verdict = "exceeds" if interval["exceeds_noise"] else "does not clearly exceed"
        lines.append(f"  - the change {verdict} noise: heads that turned {label} moved by "
                     + ", ".join(f"{h} {v:+.1f} SE" for h, v in z.items()) + f" (threshold {BORDERLINE_SE:g} SE)")
    return lines


def markdown(summary: dict, plots: list[str]) -> str:
    sc = summary["screens"]
    lines = [f"# circuit-stats report: {display_name(summary['model'])}", "",
             f"Model `{summary['model']}`, protocol `{summary['protocol']}`, {summary['n_revisions']} revisions with "
             f"their own weights, {summary['n_heads']} heads each.", ""]
    if not any(c.get("fraction") and max(c["fraction"].values()) > 0 for c in summary["classes"].values()):
        lines += [f"**No head passed any class threshold in these {summary['n_revisions']} revisions.**", ""]
    lines += ["## Onsets", "",
              f"- induction (>= {sc['induction_min_heads']} induction heads): {_fmt_rev(summary['classes']['induction']['onset'])}",
              *onset_noise_lines(summary["classes"]["induction"].get("onset_interval"), "induction"),
              f"- first-token (>= {sc['first_token_min_fraction']:.0%} of heads): {_fmt_rev(summary['classes']['first-token']['onset'])}",
              *onset_noise_lines(summary["classes"]["first-token"].get("onset_interval"), "first-token")]
    ratio = summary["induction_to_sink_onset_ratio_tokens"]
    lines.append(f"- first-token onset / induction onset, in tokens: {ratio:.1f}x" if ratio else
                 "- first-token onset / induction onset: not defined (an onset was not reached)")
    lines += ["", "## Sharpest jumps", "", "| class | before | after | share of heads |", "|---|---|---|---|"]
    jumps = [(label, info["sharpest_jump"]) for label, info in summary["classes"].items() if info.get("sharpest_jump")]
    for label, j in jumps:
        lines.append(f"| {label} | {_fmt_rev(j['before'])} | {_fmt_rev(j['after'])} | "
                     f"{j['fraction_before']:.1%} -> {j['fraction_after']:.1%} |")
    if not jumps:
        lines.append("| (none: no class fraction changed) | | | |")
    rec = summary["early_screen_recall"]["first_reaching_target"]
    circuit = summary["final_induction_circuit"]
    last = summary["revisions"][-1]["revision"]
    lines += ["", "## Early screen", "",
              f"Final induction circuit (induction heads at the last revision, `{last}`): {len(circuit)} heads "
              f"{', '.join(f'L{a}H{b}' for a, b in circuit) or '(none)'}."]
    if circuit:
        share = rec.get("fraction_of_total_tokens") if rec else None
        lines.append(f"First revision where at least {sc['recall_target']:.0%} of these heads already count as induction "
                     f"heads: {_fmt_rev(rec)}." + (f" It comes {share:.1%} of the way through the scanned training, "
                                                  "by tokens seen." if share is not None else ""))
    lines += ["", f"Layers that never hold a first-token head: {summary['layers_never_first_token']}", ""]
    dups = summary.get("duplicates") or {}
    if dups:
        lines += ["## Revisions with repeated weights", "",
                  f"{len(dups)} revisions hold the same weights as another revision and are left out of onsets, "
                  "jumps and plots:", ""] + [f"- `{r}` = `{d}`" for r, d in dups.items()] + [""]
    lines += left_out(summary)
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def left_out(summary: dict) -> list[str]:
    """Markdown lines naming the revisions this report leaves out: failed, or with NaN scores."""
    failed, nan = summary.get("failed") or {}, summary.get("non_finite") or []
    if not failed and not nan:
        return []
    lines = ["## Revisions left out", ""]
    lines += [f"- `{r}` failed (see failed/): {err}" for r, err in failed.items()]
    lines += [f"- `{r}` holds NaN or infinite scores (its model's activations are not finite)" for r in nan]
    return lines + ["", "Onsets, jumps and the final circuit above are computed without them.", ""]


def failed_revisions(scan_dir: Path) -> dict[str, str]:
    """``{revision: error}`` of the scan's ``failed/<rev>.json`` records (none for a live table)."""
    records = [read_json(p) for p in sorted((scan_dir / "failed").glob("*.json"))]
    return {r["revision"]: r.get("error", "") for r in records if r and "revision" in r}


def write_report(scan_dir: Union[str, Path], out: Optional[Union[str, Path]] = None,
                 screens: Optional[dict] = None) -> dict:
    """Read ``scan_dir/results.parquet`` and write the report into ``out`` (default
    ``scan_dir/report``). Returns the summary."""
    scan_dir = Path(scan_dir)
    table = scan_dir / "results.parquet"
    if not table.exists():
        raise FileNotFoundError(f"{table} not found: run `circuit-stats scan` first")
    results = with_labels(pd.read_parquet(table))
    out = Path(out) if out else scan_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, screens)
    done = set(results["revision"])
    summary["failed"] = {r: e for r, e in failed_revisions(scan_dir).items() if r not in done}
    results, _ = split_duplicates(results)
    results, _ = split_non_finite(results)
    revs = revisions_table(results)
    plots = ["class_fractions.png"]
    plot_fractions(summary, results, revs, out / plots[0])
    names = list(revs.revision)
    transition = _transition(summary)
    panels = [(names[0], "first")]
    if transition:
        panels += [(transition["before"]["revision"], "before jump"), (transition["after"]["revision"], "after jump")]
    panels.append((names[-1], "last"))
    seen: dict[str, str] = {}
    for rev, why in panels:
        seen.setdefault(rev, why)
    plot_heatmaps(results, list(seen.items()), summary, out / "heatmaps.png")
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
