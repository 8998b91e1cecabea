"""``summary.md`` and plots of an evaluation: which heads behave differently on the documents the
model gets wrong, and how the statistics move with document length."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..profiling.writer import atomic_write_text
from .tables import head_table


def correctness(samples: pd.DataFrame) -> pd.DataFrame:
    """``task, doc_id, metric, correct``: per task, the first metric whose per-sample values are
    all 0 or 1 (``acc``, ``exact_match``...), under the task's first filter."""
    frames = []
    for task, df in samples.groupby("task", sort=True):
        df = df[df["filter"] == df["filter"].iloc[0]]
        metrics = [c for c in df.columns if c not in ("task", "doc_id", "filter", "n_tokens", "n_requests")
                   and df[c].notna().all() and df[c].astype(float).isin([0.0, 1.0]).all()]
        if metrics:
            frames.append(pd.DataFrame({"task": task, "doc_id": df["doc_id"], "metric": metrics[0],
                                        "correct": df[metrics[0]].astype(float) == 1.0, "n_tokens": df["n_tokens"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["task", "doc_id", "metric", "correct", "n_tokens"])


def auc(values: pd.Series, positive: pd.Series) -> float:
    """Probability that a correct document's value exceeds an incorrect one's (ties count 1/2)."""
    ranks = values.rank()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def head_contrasts(heads: pd.DataFrame, stat_names: Sequence[str]) -> pd.DataFrame:
    """Per (task, statistic, layer, head): mean and standard error on correct and incorrect
    documents, their difference and the AUC of the statistic for correctness."""
    rows = []
    for (task, layer, head), g in heads.groupby(["task", "layer", "head"], sort=True):
        for stat in stat_names:
            right, wrong = g.loc[g["correct"], stat], g.loc[~g["correct"], stat]
            row = {"task": task, "statistic": stat, "layer": layer, "head": head,
                   "n_correct": len(right), "n_incorrect": len(wrong)}
            for name, part in (("correct", right), ("incorrect", wrong)):
                row[f"mean_{name}"] = part.mean() if len(part) else np.nan
                row[f"se_{name}"] = part.std(ddof=1) / np.sqrt(len(part)) if len(part) > 1 else np.nan
            row["difference"] = row["mean_correct"] - row["mean_incorrect"]
            row["auc"] = auc(g[stat], g["correct"])
            rows.append(row)
    return pd.DataFrame(rows)


def fmt(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{x:.4g}"


def write_summary(out: Path, results: dict, contrasts: pd.DataFrame, heads: pd.DataFrame, n_docs: int,
                  top: int = 8) -> None:
    lines = ["# Statistics over evaluations", "", "| task | metric | value | stderr |", "|---|---|---|---|"]
    for task, metrics in results.get("results", {}).items():
        for name, value in metrics.items():
            if "," in name and "_stderr," not in name and isinstance(value, (int, float)):
                err = metrics.get(name.replace(",", "_stderr,", 1))
                lines.append(f"| {task} | {name} | {fmt(value)} | {fmt(err) if isinstance(err, (int, float)) else 'n/a'} |")
    lines += ["", f"{n_docs} documents with statistics (pooled over every token the model read for them).", ""]
    if contrasts.empty:
        lines.append("No task has a 0/1 per-sample metric: no correct-vs-incorrect comparison.")
    for task, c in contrasts.groupby("task", sort=True):
        c = c.assign(strength=(c["auc"] - 0.5).abs()).sort_values("strength", ascending=False)
        n_right, n_wrong = int(c["n_correct"].iloc[0]), int(c["n_incorrect"].iloc[0])
        if n_right == 0 or n_wrong == 0:
            lines += [f"## {task}", "", f"{n_right} correct, {n_wrong} incorrect documents: nothing to compare.", ""]
            continue
        lines += [f"## {task}: heads whose statistics predict correctness best", "",
                  f"{n_right} correct, {n_wrong} incorrect documents. Mean +- standard error.", "",
                  "| statistic | head | correct | incorrect | difference | AUC |", "|---|---|---|---|---|---|"]
        for r in c.head(top).itertuples():
            lines.append(f"| {r.statistic} | L{r.layer}H{r.head} | {fmt(r.mean_correct)} +- {fmt(r.se_correct)} | "
                         f"{fmt(r.mean_incorrect)} +- {fmt(r.se_incorrect)} | {fmt(r.difference)} | {fmt(r.auc)} |")
        lines.append("")
    lines += ["## Mean statistic per head over all documents", "", heads_markdown(heads), ""]
    atomic_write_text(out / "summary.md", "\n".join(lines))


def heads_markdown(heads: pd.DataFrame) -> str:
    stats = [c for c in heads.columns if c not in ("task", "doc_id", "layer", "head", "n_queries", "correct",
                                                    "n_tokens", "metric")]
    means = heads.groupby(["task", "layer", "head"])[stats].mean().reset_index()
    header = "| task | head | " + " | ".join(stats) + " |\n|---|---|" + "---|" * len(stats)
    body = ["| " + " | ".join([r["task"], f"L{r['layer']}H{r['head']}"] + [fmt(r[s]) for s in stats]) + " |"
            for _, r in means.iterrows()]
    return "\n".join([header, *body])


def write_plots(out: Path, contrasts: pd.DataFrame, heads: pd.DataFrame, stat_names: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for stat in stat_names:
        c = contrasts[contrasts["statistic"] == stat]
        if not c.empty:
            fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(c)), 3.5))
            x = np.arange(len(c))
            labels = [f"{t}\nL{l}H{h}" if c["task"].nunique() > 1 else f"L{l}H{h}"
                      for t, l, h in zip(c["task"], c["layer"], c["head"])]
            for shift, name in ((-0.2, "correct"), (0.2, "incorrect")):
                ax.bar(x + shift, c[f"mean_{name}"], 0.4, yerr=c[f"se_{name}"].fillna(0), label=name, capsize=2)
            ax.set_xticks(x, labels, fontsize=7, rotation=90)
            ax.set_ylabel(stat)
            ax.set_title(f"{stat}: correct vs incorrect documents (+-1 SE)")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / f"correct_vs_incorrect_{stat}.png", dpi=110)
            plt.close(fig)
        plot_length(out, heads, stat, plt)


def plot_length(out: Path, heads: pd.DataFrame, stat: str, plt) -> None:
    layers = sorted(heads["layer"].unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.2), squeeze=False, sharey=True)
    for ax, layer in zip(axes[0], layers):
        for head, g in heads[heads["layer"] == layer].groupby("head"):
            ax.scatter(g["n_tokens"], g[stat], s=10, label=f"H{head}")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("document tokens")
    axes[0][0].set_ylabel(stat)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{stat} against document length")
    fig.tight_layout()
    fig.savefig(out / f"length_{stat}.png", dpi=110)
    plt.close(fig)


def write_report(out: Path, results: dict, samples: pd.DataFrame, statistics: pd.DataFrame,
                 stat_names: Sequence[str], plots: bool = True) -> Optional[pd.DataFrame]:
    """``summary.md`` (and ``plots/``) in ``out``; returns the per-head contrasts."""
    heads = head_table(statistics, stat_names)
    labels = correctness(samples)
    heads = heads.merge(labels, on=["task", "doc_id"], how="left")
    heads["correct"] = heads["correct"].fillna(False).astype(bool)
    labelled = heads[heads["task"].isin(labels["task"])]
    contrasts = head_contrasts(labelled, stat_names) if not labelled.empty else pd.DataFrame()
    if "n_tokens" not in heads or heads["n_tokens"].isna().any():
        sizes = samples.drop_duplicates(["task", "doc_id"])[["task", "doc_id", "n_tokens"]]
        heads = heads.drop(columns=["n_tokens"], errors="ignore").merge(sizes, on=["task", "doc_id"], how="left")
    write_summary(out, results, contrasts, heads, heads[["task", "doc_id"]].drop_duplicates().shape[0])
    if plots:
        write_plots(out / "plots", contrasts, heads, stat_names)
    return contrasts
