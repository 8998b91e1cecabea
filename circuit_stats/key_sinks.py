"""Sinks beyond position 0, from the attention each key receives (``record(key_mass=True)``).

Gu et al. define ``alpha_k`` for every key k: the mean attention key k receives from the queries
that can attend it. A *secondary sink* is a key other than position 0 whose ``alpha_k`` exceeds
``eps`` (later work finds them on delimiters, newlines, the first tokens after a BOS); grouping
them by token id across texts says which tokens become sinks.
"""

from __future__ import annotations

import pandas as pd
import torch

from .tokenization import token_string

SECONDARY_COLUMNS = ("layer", "head", "token_id", "token", "n_keys", "n_sinks", "alpha_mean", "alpha_max")


def alpha_column(k: int) -> str:
    """The column of Gu et al.'s ``alpha_k`` (``alpha0``, ``alpha1``, ...)."""
    return f"alpha{k}"


def counted_keys(key_attention: torch.Tensor, tokens: torch.Tensor, min_queries: int) -> torch.Tensor:
    """``[sequences, positions]`` bool: the keys a secondary sink may be, position >= 1 with at
    least ``min_queries`` queries at or after it in its sequence (a key near the end is attended by
    too few rows for its mean to mean much), and a known token id.
    ``key_attention [sequences, layers, heads, positions]`` (NaN past a sequence's end)."""
    lengths = (~key_attention[:, 0, 0].isnan()).sum(-1)  # [sequences]
    pos = torch.arange(key_attention.shape[-1])
    return (pos >= 1) & (pos[None, :] + min_queries <= lengths[:, None]) & (tokens >= 0)


def secondary_sinks(key_attention: torch.Tensor, tokens: torch.Tensor, eps: float, min_queries: int,
                    tokenizer=None, every_token: bool = False) -> pd.DataFrame:
    """Per (layer, head, token id): the keys other than position 0 holding that token
    (``n_keys``), how many of them have ``alpha_k > eps`` (``n_sinks``), and the mean and largest
    ``alpha_k`` over them; only the (layer, head, token id) with ``n_sinks >= 1``, most sinks first
    within a head. ``token``: the token's text (``tokenization.token_string``).

    ``key_attention [sequences, layers, heads, positions]`` (per sequence, ``record().per_sample()``),
    ``tokens [sequences, positions]`` (``record().key_tokens()``).

    ``every_token``: every (layer, head, token id) with a counted key, sinks or not, and a column
    ``alpha_sum`` (``alpha_mean * n_keys`` without its rounding), to pool calls over texts."""
    keep = counted_keys(key_attention, tokens, min_queries)
    alpha = key_attention.permute(1, 2, 0, 3)[..., keep].double()  # [L, H, V] over the kept keys
    ids, group = torch.unique(tokens[keep], return_inverse=True)  # V keys -> T token ids
    L, H, _ = alpha.shape
    T = ids.numel()

    def by_token(values: torch.Tensor, reduce: str) -> torch.Tensor:
        out = torch.zeros(L, H, T, dtype=torch.float64)
        return out.scatter_reduce_(2, group.expand(L, H, -1), values, reduce=reduce, include_self=False)

    n_keys = torch.bincount(group, minlength=T)
    n_sinks = by_token((alpha > eps).double(), "sum")
    hit = torch.nonzero(n_sinks >= (0 if every_token else 1))  # [rows, 3] layer, head, token index
    layer, head, t = hit.unbind(1)
    df = pd.DataFrame({
        "layer": layer.numpy(), "head": head.numpy(), "token_id": ids[t].numpy(),
        "token": [token_string(tokenizer, int(i)) for i in ids[t]],
        "n_keys": n_keys[t].numpy(), "n_sinks": n_sinks[layer, head, t].long().numpy(),
        "alpha_mean": (by_token(alpha, "sum") / n_keys)[layer, head, t].numpy(),
        "alpha_max": by_token(alpha, "amax")[layer, head, t].numpy(),
    }, columns=list(SECONDARY_COLUMNS))
    if every_token:
        df["alpha_sum"] = by_token(alpha, "sum")[layer, head, t].numpy()
    return df.sort_values(["layer", "head", "n_sinks", "alpha_mean"], ascending=[True, True, False, False],
                          ignore_index=True)


def first_key_alphas(key_attention: torch.Tensor, n_keys: int) -> dict[str, torch.Tensor]:
    """``{alpha_k column: [layers, heads]}`` for ``k = 1 .. n_keys - 1`` from the pooled
    ``key_attention [layers, heads, positions]``."""
    return {alpha_column(k): key_attention[..., k] for k in range(1, n_keys)}


def sinks_per_head(table: pd.DataFrame, n_layers: int, n_heads: int) -> torch.Tensor:
    """``[layers, heads]``: how many token ids are secondary sinks of each head."""
    out = torch.zeros(n_layers, n_heads, dtype=torch.long)
    counts = table.groupby(["layer", "head"]).size()
    for (layer, head), n in counts.items():
        out[layer, head] = int(n)
    return out

