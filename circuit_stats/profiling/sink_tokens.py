"""Per-token-id sink tables of a profile with ``key_attention``: which tokens receive attention
like a sink beyond position 0 (Gu et al.'s ``alpha_k`` per key, grouped by token id).

Each document gives its sums per (layer, head, token id) (``document_sums``, through
``key_sinks.secondary_sinks``: the sink protocol's own grouping, eligibility and threshold);
``merge_sums`` pools them over documents into ``sink_tokens.parquet``; ``summary_lines`` is its
section of ``summary.md``. A key counts (is *eligible*) when it is at position >= 1 and at least
``min_queries`` queries of its document are at or after it, as in the sink protocol.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import pandas as pd
import torch

from ..finite import NonFiniteError
from ..key_sinks import secondary_sinks
from ..tokenization import token_string

TABLE = "sink_tokens.parquet"
KEYS = ["layer", "head", "token_id"]
SUMS = ["n_occurrences", "n_keys", "n_sinks", "alpha_sum"]
PART_COLUMNS = KEYS + SUMS + ["alpha_max"]
COLUMNS = KEYS + ["token", "n_texts", "n_occurrences", "n_keys", "n_sinks", "alpha_mean", "alpha_max", "status"]
SINK, NOT_SINK, TOO_FEW = "sink", "not a sink", "too few queries"


def document_sums(key_attention: torch.Tensor, ids: Sequence[int], eps: float, min_queries: int) -> pd.DataFrame:
    """One document's ``PART_COLUMNS`` for every (layer, head, token id at a position >= 1):
    ``n_occurrences`` (its keys at positions >= 1), ``n_keys`` (the eligible ones), ``n_sinks``
    (eligible with ``alpha_k > eps``), ``alpha_sum`` and ``alpha_max`` over the eligible keys (0 and
    NaN when none is). ``key_attention [layers, heads, N]`` (the document's ``alpha_k``),
    ``ids``: its N token ids. ``NonFiniteError`` when an eligible key's ``alpha_k`` is not finite."""
    L, H, N = key_attention.shape
    tokens = torch.as_tensor(list(ids), dtype=torch.long)[None]  # [1, N]
    alpha = key_attention[None].float()  # [1, L, H, N]
    if not torch.isfinite(alpha).all():  # every key of one unpadded document is attended by a query
        raise NonFiniteError("alpha_k (attention received per key) is NaN or infinite: "
                             "the model's activations are not finite")
    per_layer = []  # one layer at a time: O(heads x N) float64 beside the recording
    for layer in range(L):
        df = secondary_sinks(alpha[:, layer:layer + 1], tokens, eps, min_queries, every_token=True)
        per_layer.append(df.assign(layer=layer))
    counted = pd.concat(per_layer, ignore_index=True)[KEYS + ["n_keys", "n_sinks", "alpha_sum", "alpha_max"]]
    seen = torch.unique(tokens[0, 1:], return_counts=True)  # every token at a position >= 1
    grid = pd.MultiIndex.from_product([range(L), range(H), seen[0].tolist()], names=KEYS).to_frame(index=False)
    grid["n_occurrences"] = seen[1].repeat(L * H).numpy()
    out = grid.merge(counted, on=KEYS, how="left", validate="one_to_one")
    out = out.fillna({"n_keys": 0, "n_sinks": 0, "alpha_sum": 0.0})
    return out.astype({"n_keys": "int64", "n_sinks": "int64"})[PART_COLUMNS]


def pooled_sums(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """``KEYS``, ``SUMS``, ``alpha_max`` and ``n_texts`` (parts holding the row) added up one part
    at a time, in order: memory holds the pooled rows and one part, never every document's."""
    pooled = None
    for part in parts:
        part = part.assign(n_texts=1)
        both = part if pooled is None else pd.concat([pooled, part], ignore_index=True)
        groups = both.groupby(KEYS, sort=True)
        pooled = groups[SUMS + ["n_texts"]].sum().join(groups["alpha_max"].max()).reset_index()
    if pooled is None:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c.startswith("alpha") else "int64")
                             for c in KEYS + SUMS + ["n_texts", "alpha_max"]})
    return pooled


def merge_sums(parts: Iterable[pd.DataFrame], tokenizer=None) -> pd.DataFrame:
    """``COLUMNS`` per (layer, head, token id), pooled over documents' ``document_sums``:
    ``n_texts`` (documents holding the token at a position >= 1), ``alpha_mean`` (over every
    eligible key, ``alpha_sum / n_keys``) and ``status``: ``"sink"`` (some eligible key has
    ``alpha_k > eps``: the rows the sink protocol's ``secondary_sinks`` lists, with its numbers),
    ``"not a sink"``, or ``"too few queries"`` (no eligible key: ``alpha_mean`` and ``alpha_max``
    are NaN, and only there). Rows in the sink protocol's order: per head, most sinks first."""
    table = pooled_sums(parts)
    counted = table["n_keys"] > 0
    table["alpha_mean"] = (table["alpha_sum"] / table["n_keys"]).where(counted)
    table["status"] = NOT_SINK
    table.loc[table["n_sinks"] > 0, "status"] = SINK
    table.loc[~counted, "status"] = TOO_FEW
    names = {int(i): token_string(tokenizer, int(i)) for i in table["token_id"].unique()}
    table["token"] = table["token_id"].map(names)
    table = table.sort_values(["layer", "head", "n_sinks", "alpha_mean"], ascending=[True, True, False, False],
                              ignore_index=True, na_position="last")
    return table[COLUMNS]


def top_sinks(table: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` tokens that are secondary sinks in the most heads: ``token_id``, ``token``,
    ``n_heads`` (heads where it is a sink), ``n_keys`` (its eligible keys), ``n_sinks`` (summed
    over those heads), ``alpha_mean`` (its largest over those heads) and ``top_head``."""
    sinks = table[table["status"] == SINK]
    best = sinks.loc[sinks.groupby("token_id")["alpha_mean"].idxmax(), ["token_id", "layer", "head"]]
    g = sinks.groupby("token_id").agg(token=("token", "first"), n_heads=("head", "size"), n_keys=("n_keys", "first"),
                                      n_sinks=("n_sinks", "sum"), alpha_mean=("alpha_mean", "max"))
    g["top_head"] = pd.Series(("L" + best["layer"].astype(str) + "H" + best["head"].astype(str)).to_numpy(),
                              index=best["token_id"].to_numpy())
    return g.reset_index().sort_values(["n_heads", "n_sinks", "alpha_mean"], ascending=False).head(n)


def summary_lines(table: Optional[pd.DataFrame], eps: float, min_queries: int, n_heads: int) -> list[str]:
    """``summary.md``'s section on the sink table (``table``: ``merge_sums``; None: no eligible key)."""
    lines = ["## Secondary sinks (attention received per token id, keys at positions >= 1)", "",
             f"A key is a secondary sink of a head when its `alpha_k` (the mean attention it receives from the "
             f"queries at or after it) exceeds eps = {eps:g}; keys with fewer than {min_queries} queries at or "
             f"after them do not count. Per (layer, head, token id): `{TABLE}`.", ""]
    if table is None or not (table["n_keys"] > 0).any():
        return lines + [f"No key had {min_queries} queries at or after it: no alpha_k was measured "
                        "(documents too short for min_queries).", ""]
    few = table.loc[table["status"] == TOO_FEW, "token_id"].nunique()
    sinks = table[table["status"] == SINK]
    lines.append(f"- {table['token_id'].nunique()} token ids at positions >= 1"
                 + (f" ({few} only where too few queries follow: status `{TOO_FEW}`, no alpha_k)" if few else "")
                 + (f"; {sinks['token_id'].nunique()} of them are secondary sinks, in "
                    f"{len(sinks[['layer', 'head']].drop_duplicates())} of {n_heads} heads." if len(sinks) else
                    f"; none is a secondary sink of any of the {n_heads} heads (no eligible alpha_k > {eps:g})."))
    if sinks.empty:
        top = table.nlargest(5, "alpha_max")
        return lines + ["", "The largest alpha_k of an eligible key (closest to a sink):", "",
                        "| token | id | head | alpha_max | alpha_mean | eligible keys |",
                        "|---|---|---|---|---|---|"] + [
            f"| {cell(r.token)} | {int(r.token_id)} | L{int(r.layer)}H{int(r.head)} | {r.alpha_max:.4f} | "
            f"{r.alpha_mean:.4f} | {int(r.n_keys)} |" for r in top.itertuples()] + [""]
    lines += ["", "Tokens that are sinks in the most heads (alpha_mean: over all its eligible keys, in its top head):",
              "", "| token | id | heads | eligible keys | sink keys (all heads) | alpha_mean | top head |",
              "|---|---|---|---|---|---|---|"]
    for r in top_sinks(table).itertuples():
        lines.append(f"| {cell(r.token)} | {int(r.token_id)} | {int(r.n_heads)} | {int(r.n_keys)} | {int(r.n_sinks)} | "
                     f"{r.alpha_mean:.3f} | {r.top_head} |")
    return lines + [""]


def cell(token: str) -> str:
    """A token's text inside a Markdown table cell: visible whitespace, no column breaks."""
    shown = repr(token)[1:-1] if token else ""
    return "`" + shown.replace("|", "\\|").replace("`", "'") + "`" if shown else "(unknown)"
