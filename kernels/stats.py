"""The container returned next to the attention output."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch


@dataclass
class AttentionStats:
    """Per-row attention statistics, all float32 and shaped ``[B, Hq, Nq]``.

    ``lse``        natural-log log-sum-exp of the row's scaled scores (``-inf`` for a row
                   with no attendable key).
    ``sink``       probability on the row's first attendable key (key 0, or the first
                   unpadded key).
    ``offsets``    ``[B, Hq, Nq, len(offsets)]``: probability on key ``i - o`` per offset.
    ``probes``     ``[B, Hq, Nq, P]``: probability on the absolute key ``probe_keys[b, t]``.
    ``induction``  token-match induction mass (keys j with ``tok[j-1] == tok[i]``, j-1 < i).
    ``duplicate``  token-match duplicate mass (keys j < i with ``tok[j] == tok[i]``).
    ``entropy``    Shannon entropy of the row, in nats.

    Statistics that were not requested are ``None``. Rows with no attendable key hold 0
    in every statistic (``lse`` is ``-inf``).
    """

    lse: torch.Tensor
    sink: torch.Tensor
    offsets: Optional[torch.Tensor] = None
    probes: Optional[torch.Tensor] = None
    induction: Optional[torch.Tensor] = None
    duplicate: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The statistics that are present, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
