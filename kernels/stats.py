"""The container returned next to the attention output."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch


@dataclass
class AttentionStats:
    """Per-row attention statistics, float32 and shaped ``[B, Hq, Nq]`` unless noted.

    Every point/mass statistic uses the model's real probabilities ``p_ij = exp(s'_ij - lse_i)``
    (``s'`` the scaled, soft-capped, masked score); ``i`` and ``j`` are absolute key positions
    (query ``i`` of ``Nq`` sits at key ``Nk - Nq + i``).

    ``lse``          natural-log log-sum-exp of the full softmax denominator: the keys, plus
                     ``exp(sink_h)`` when learned ``sinks`` are given (``-inf`` for a row with no
                     attendable key and no learned sink).
    ``sink``         probability on the row's first attendable key (key 0, or the first
                     unpadded key) -- the Gu et al. attention sink, not the learned one.
    ``offsets``      ``[B, Hq, Nq, len(offsets)]``: probability on key ``i - o`` per offset.
    ``probes``       ``[B, Hq, Nq, P]``: probability on the absolute key ``probe_keys[b, t]``.
    ``induction``    token-match induction mass (keys j with ``tok[j-1] == tok[i]``, j-1 < i).
    ``duplicate``    token-match duplicate mass (keys j < i with ``tok[j] == tok[i]``).
    ``entropy``      Shannon entropy of the row in nats (the learned sink counts as one more
                     outcome when ``sinks`` are given).
    ``distance``     expected attention distance ``sum_j p_ij (i - j)``, in tokens.
    ``local``        mass on the last ``local_window`` keys, ``i - W < j <= i``.
    ``top1_index``   int64: absolute key position of the row's largest probability (ties: the
                     smallest position); -1 for a row with no attendable key or a NaN row.
    ``top1_prob``    that key's probability.
    ``span``         mass on the per-sequence key range ``[span[b, 0], span[b, 1])``.
    ``learned_sink`` mass absorbed by the learned sink logit, ``exp(sink_h - lse)``.
    ``key_mass``     ``[B, Hq, Nk]``, per key: the attention it receives from the call's queries,
                     ``sum_i w[b, i] p_ij`` (``w`` the ``key_mass_queries`` weight, default 1;
                     rows with weight 0 do not count at all). A padded key, a key no counted
                     query may attend and a row with no attendable key contribute 0.

    Statistics that were not requested are ``None``. A row with no attendable key holds 0 in
    every statistic (``lse`` -inf, ``top1_index`` -1; with learned sinks ``learned_sink`` is 1
    and ``lse`` the sink logit). A row whose output is NaN (a NaN score it can attend, a NaN
    value) holds NaN in every float statistic and -1 in ``top1_index``; a NaN row that counts
    (weight != 0) makes its head's whole ``key_mass[b, h]`` NaN.
    """

    lse: torch.Tensor
    sink: torch.Tensor
    offsets: Optional[torch.Tensor] = None
    probes: Optional[torch.Tensor] = None
    induction: Optional[torch.Tensor] = None
    duplicate: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None
    distance: Optional[torch.Tensor] = None
    local: Optional[torch.Tensor] = None
    top1_index: Optional[torch.Tensor] = None
    top1_prob: Optional[torch.Tensor] = None
    span: Optional[torch.Tensor] = None
    learned_sink: Optional[torch.Tensor] = None
    key_mass: Optional[torch.Tensor] = None

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The statistics that are present, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def mark_nan_rows(self, row_nan: torch.Tensor, query_weight: Optional[torch.Tensor] = None) -> "AttentionStats":
        """In place: NaN in every float statistic and -1 in ``top1_index`` where ``row_nan``
        (``[B, Hq, Nq]`` bool) is set; NaN in all of ``key_mass[b, h]`` where a NaN row of that
        head counts (``query_weight [B, Nq]`` != 0; None: every row counts). Returns ``self``.

        The float ``[B, Hq, Nq]`` statistics are marked together, by one multi-tensor multiply
        with 1 or NaN per row (``x * 1`` is ``x`` exactly, infinities and signed zeros included):
        one kernel on a GPU instead of one per statistic."""
        rows = []
        for name, t in self.as_dict().items():
            if name == "key_mass":
                counted = row_nan if query_weight is None else row_nan & (query_weight[:, None, :] != 0)
                t.masked_fill_(counted.any(-1, keepdim=True), math.nan)
            elif t.dim() == row_nan.dim() and t.dtype == torch.float32:
                rows.append(t)
            else:
                mask = row_nan if t.dim() == row_nan.dim() else row_nan[..., None]
                t.masked_fill_(mask, -1 if name == "top1_index" else math.nan)
        if rows:
            factor = torch.where(row_nan, math.nan, 1.0).to(torch.float32)  # [B, Hq, Nq]
            torch._foreach_mul_(rows, [factor] * len(rows))
        return self
