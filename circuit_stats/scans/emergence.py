"""Emergence analytics on a scan's results table: class fractions, jumps, onsets and the summary."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pandas as pd

from ..finite import float_columns, non_finite_rows
from ..labels import FIRST_TOKEN, HEAD_CLASSES, INDUCTION, UNCLASSIFIED, flag_column
from ..protocols import get_protocol
from ..protocols.uncertainty import BORDERLINE_SE, se_column

DEFAULT_SCREENS = {"induction_min_heads": 3, "first_token_min_fraction": 0.5, "recall_target": 2 / 3}


def class_fractions(results: pd.DataFrame) -> pd.DataFrame:
    """Per revision (rows, in training order): the share of heads with each label (columns)."""
    if results.empty:
        return pd.DataFrame()
    results = with_labels(results)
    frac = pd.crosstab([results["step"], results["revision"]], results["label"], normalize="index")
    return frac.sort_index()


def largest_jump(results: pd.DataFrame, label: Optional[str] = None) -> Optional[dict]:
    """The adjacent pair of scanned revisions with the largest change in a class fraction
    (``unclassified`` excluded, or only ``label``)."""
    frac = class_fractions(results)
    if len(frac) < 2:
        return None
    cols = [c for c in frac.columns if c != UNCLASSIFIED] if label is None else [label]
    cols = [c for c in cols if c in frac.columns]
    best = None
    revs = [r for _, r in frac.index]
    for c in cols:
        diff = frac[c].diff().abs().to_numpy()
        for i in range(1, len(diff)):
            if best is None or diff[i] > best["size"] + 1e-12:
                best = {"label": c, "size": float(diff[i]), "before": revs[i - 1], "after": revs[i],
                        "fraction_before": float(frac[c].iloc[i - 1]), "fraction_after": float(frac[c].iloc[i])}
    return best if best and best["size"] > 0 else None


def revisions_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per scanned revision in training order: revision, step, tokens."""
    cols = ["revision", "step", "tokens"]
    return results[cols].drop_duplicates("revision").sort_values(["step", "revision"]).reset_index(drop=True)


def induction_heads(rows: pd.DataFrame) -> set[tuple[int, int]]:
    """Heads counted as induction heads: the protocol's induction flag (xu2026: the >= 50x
    screen) when it declares one, else the label."""
    protocol = get_protocol(str(rows["protocol"].iloc[0])) if "protocol" in rows and len(rows) else None
    flag_col = protocol.induction_flag if protocol else None
    flag = rows[flag_col] if flag_col in rows else rows["label"] == INDUCTION
    return {(int(r.layer), int(r.head)) for r, f in zip(rows.itertuples(), flag) if f}


def revision_info(revs: pd.DataFrame, revision: str) -> dict:
    """``{"revision", "step", "tokens"}`` of one row of :func:`revisions_table`."""
    row = revs[revs.revision == revision].iloc[0]
    return {"revision": revision, "step": int(row.step), "tokens": None if pd.isna(row.tokens) else int(row.tokens)}


def _first(revs: pd.DataFrame, passes) -> Optional[dict]:
    for rev in revs.revision:
        if passes(rev):
            return revision_info(revs, rev)
    return None


def onset_interval(onset: Optional[dict], revs: pd.DataFrame, by_rev: dict, score: Optional[str],
                   heads: Callable[[pd.DataFrame], set]) -> Optional[dict]:
    """Where an onset lies and whether it exceeds noise: ``after`` (the onset revision), ``before``
    (the scanned revision just before it; None at the first) and, when the table has the score's
    standard error (``<score>_se``), for each head that ``heads(rows)`` counts at the onset but not
    before it, the change in ``score`` in standard errors, ``z = (after - before) /
    sqrt(se_after^2 + se_before^2)``; ``exceeds_noise`` when every such head's ``|z| >=
    BORDERLINE_SE`` (2)."""
    if onset is None:
        return None
    i = list(revs.revision).index(onset["revision"])
    out = {"before": revision_info(revs, revs.revision.iloc[i - 1]) if i else None, "after": onset,
           "change_z": None, "exceeds_noise": None}
    se = None if score is None else se_column(score)
    if not i or se is None or se not in by_rev[onset["revision"]]:
        return out
    prev = revs.revision.iloc[i - 1]
    after, before = (by_rev[r].set_index(["layer", "head"]) for r in (onset["revision"], prev))
    new = sorted(heads(by_rev[onset["revision"]]) - heads(by_rev[prev]))
    z = {f"L{a}H{b}": float((after.loc[(a, b), score] - before.loc[(a, b), score])
                            / np.hypot(after.loc[(a, b), se], before.loc[(a, b), se])) for a, b in new}
    out.update(change_z=z, exceeds_noise=bool(z) and all(abs(v) >= BORDERLINE_SE for v in z.values()))
    return out


def labelled(label: str) -> Callable[[pd.DataFrame], set]:
    """The heads of one revision's rows whose ``label`` is ``label``."""
    return lambda rows: {(int(r.layer), int(r.head)) for r in rows.itertuples() if r.label == label}


def split_duplicates(results: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows of revisions with their own weights, and ``{revision: duplicate_of}`` for the
    revisions that repeat another's weights (left out of onsets and jumps)."""
    if "duplicate_of" not in results or results.empty:
        return results, {}
    marked = results["duplicate_of"].notna()
    dups = results.loc[marked, ["revision", "duplicate_of"]].drop_duplicates("revision")
    return results[~marked], {str(r): str(d) for r, d in zip(dups["revision"], dups["duplicate_of"])}


def with_labels(results: pd.DataFrame) -> pd.DataFrame:
    """The table with its ``label`` column; a table without one (a retrieval scan written before
    that protocol labelled heads) gets it from its ``is_<class>`` flags, the first class of
    ``HEAD_CLASSES`` that a head passes, else ``unclassified``."""
    if "label" in results or results.empty:
        return results
    flags = [(c, flag_column(c)) for c in HEAD_CLASSES if c != UNCLASSIFIED and flag_column(c) in results]
    if not flags:
        raise ValueError("the results table has neither a 'label' column nor is_<class> flag columns "
                         f"(columns: {list(results.columns)})")
    label = pd.Series(UNCLASSIFIED, index=results.index, dtype=object)
    for cls, col in reversed(flags):
        label = label.mask(results[col].astype(bool), cls)
    return results.assign(label=label)


def split_non_finite(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows of revisions whose scores are all finite, and the revisions holding a NaN or
    infinite score (except where the protocol defines NaN, ``Protocol.nan_scores``): left out of
    onsets, jumps and circuits, since a NaN head is neither classified nor unclassified."""
    if results.empty:
        return results, []
    protocol = get_protocol(str(results["protocol"].iloc[0])) if "protocol" in results else None
    bad = non_finite_rows(results, float_columns(results, exclude=protocol.nan_scores if protocol else ()))
    revs = list(dict.fromkeys(results.loc[bad, "revision"]))
    return results[~results["revision"].isin(revs)], revs


def summarise(results: pd.DataFrame, screens: Optional[dict] = None) -> dict:
    """Onsets, sharpest jumps, onset ratio, early-screen recall and sink-free layers, over the
    revisions with their own weights and finite scores (duplicates are listed under
    ``duplicates``, revisions with NaN scores under ``non_finite``)."""
    results, duplicates = split_duplicates(with_labels(results))
    results, non_finite = split_non_finite(results)
    if results.empty:
        raise ValueError("no finished revisions to summarise"
                         + (f" (every revision holds NaN scores: {non_finite})" if non_finite else ""))
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
            jump = {"before": revision_info(revs, jump["before"]), "after": revision_info(revs, jump["after"]),
                    "fraction_before": jump["fraction_before"], "fraction_after": jump["fraction_after"]}
        classes[label] = {"fraction": {r: float(frac.loc[r, label]) for r in revs.revision}, "sharpest_jump": jump}

    ind_onset = _first(revs, lambda r: len(induction_heads(by_rev[r])) >= sc["induction_min_heads"])
    sink_onset = _first(revs, lambda r: FIRST_TOKEN in frac.columns
                        and frac.loc[r, FIRST_TOKEN] >= sc["first_token_min_fraction"])
    classes.setdefault(INDUCTION, {"fraction": {}, "sharpest_jump": None})["onset"] = ind_onset
    classes.setdefault(FIRST_TOKEN, {"fraction": {}, "sharpest_jump": None})["onset"] = sink_onset
    protocol = get_protocol(str(results.protocol.iloc[0]))
    classes[INDUCTION]["onset_interval"] = onset_interval(ind_onset, revs, by_rev, protocol.induction_score,
                                                          induction_heads)
    classes[FIRST_TOKEN]["onset_interval"] = onset_interval(sink_onset, revs, by_rev, protocol.first_token_score,
                                                            labelled(FIRST_TOKEN))

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
        "revisions": [revision_info(revs, r) for r in revs.revision],
        "classes": classes,
        "induction_to_sink_onset_ratio_tokens": ratio,
        "final_induction_circuit": sorted([list(h) for h in final]),
        "early_screen_recall": {"per_revision": recall, "first_reaching_target": first_recall},
        "layers_never_first_token": [int(x) for x in layers if x not in sink_layers],
        "duplicates": duplicates,
        "non_finite": non_finite,
    }
