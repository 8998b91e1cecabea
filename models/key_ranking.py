"""The most-attended keys of a recording (``Recording.top_keys``), as a table."""

from __future__ import annotations

import numbers

import pandas as pd
import torch

from .key_mass import UNKNOWN_TOKEN


def common_tokens(tokens: torch.Tensor, reached: torch.Tensor) -> torch.Tensor:
    """``[positions]`` int64: the token id every sequence that reaches a position has there
    (``tokens [sequences, positions]``, ``reached`` bool alike), ``UNKNOWN_TOKEN`` where they
    differ, where one is unknown or where none reaches it."""
    big = torch.iinfo(torch.long).max
    lo = torch.where(reached, tokens, big).min(0).values
    hi = torch.where(reached, tokens, -big).max(0).values
    return torch.where(reached.any(0) & (lo == hi), lo, UNKNOWN_TOKEN)


def check_top_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be an int >= 1 (keys per head), got {n!r}")


def top_keys_frame(key_mass: torch.Tensor, key_attention: torch.Tensor, token_ids: torch.Tensor, n: int) -> pd.DataFrame:
    """Rows ``layer, head, rank, position, token_id, key_mass, key_attention``: per (layer, head)
    the ``n`` positions with the largest ``key_mass [L, H, P]`` (NaN positions never; fewer rows
    where fewer positions exist). ``token_ids [P]``."""
    check_top_n(n)
    L, H, P = key_mass.shape
    k = min(int(n), int((~key_mass[0, 0].isnan()).sum()))
    ranked = torch.where(key_mass.isnan(), -torch.inf, key_mass).topk(k, dim=-1)  # ties: any order
    pos = ranked.indices  # [L, H, k]
    layer = torch.arange(L)[:, None, None].expand_as(pos)
    head = torch.arange(H)[None, :, None].expand_as(pos)
    rank = torch.arange(k)[None, None, :].expand_as(pos)
    return pd.DataFrame({
        "layer": layer.reshape(-1).numpy(), "head": head.reshape(-1).numpy(), "rank": rank.reshape(-1).numpy(),
        "position": pos.reshape(-1).numpy(), "token_id": token_ids[pos].reshape(-1).numpy(),
        "key_mass": ranked.values.reshape(-1).numpy(),
        "key_attention": key_attention.gather(-1, pos).reshape(-1).numpy(),
    })
