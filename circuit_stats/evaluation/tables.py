"""The per-document tables of an evaluation: ``samples.parquet`` and ``statistics.parquet``."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

BIN_KEYS = ["task", "doc_id", "layer", "head", "bin", "pos_lo", "pos_hi"]


def pool_queries(rows: pd.DataFrame, keys: Sequence[str], statistics: Sequence[str]) -> pd.DataFrame:
    """Query-weighted means of ``statistics`` over the rows sharing ``keys``: each row is a mean
    over its ``n_queries`` queries, the result the mean over all of them (``n_queries`` summed)."""
    weighted = rows[list(statistics)].mul(rows["n_queries"], axis=0)
    weighted[list(keys)] = rows[list(keys)]
    weighted["n_queries"] = rows["n_queries"]
    sums = weighted.groupby(list(keys), sort=True).sum().reset_index()
    sums[list(statistics)] = sums[list(statistics)].div(sums["n_queries"], axis=0)
    return sums[[*keys, "n_queries", *statistics]]


def statistics_table(request_rows: pd.DataFrame, statistics: Sequence[str]) -> pd.DataFrame:
    """One row per (task, doc_id, layer, head, position bin): the statistics pooled over every
    query of every request of the document (a multiple-choice context counts once per choice)."""
    return pool_queries(request_rows, BIN_KEYS, statistics)


def samples_table(samples: dict, requests: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, doc_id, filter) from lm-eval's logged samples: its per-sample metrics,
    ``n_tokens`` (tokens the model read for the document's longest request) and ``n_requests``."""
    rows = []
    for task, logged in samples.items():
        for s in logged:
            row = {"task": task, "doc_id": int(s["doc_id"]), "filter": s.get("filter", "none")}
            row.update({m: s[m] for m in s.get("metrics", []) if isinstance(s.get(m), (int, float, bool))})
            rows.append(row)
    df = pd.DataFrame(rows)
    sizes = requests.groupby(["task", "doc_id"]).agg(n_tokens=("n_tokens", "max"), n_requests=("request", "size"))
    return df.merge(sizes.reset_index(), on=["task", "doc_id"], how="left")


def head_table(statistics: pd.DataFrame, stat_names: Sequence[str]) -> pd.DataFrame:
    """One row per (task, doc_id, layer, head): the statistics pooled over position bins."""
    return pool_queries(statistics, ["task", "doc_id", "layer", "head"], stat_names)
