"""The tensors the kernels read beside q, k and v, built and validated once.

``attention_with_stats`` builds a :class:`SideInputs` from its arguments on every call; callers
that run many attention calls over the same keys (the Hugging Face integration: every layer of
one forward) build it once per forward and device with :meth:`SideInputs.build` and pass it as
``side_inputs=``, so that validation, dtype conversion and derived tensors happen once.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence

import torch


# A value check: a 0-d bool tensor (True = the values are bad) and the error message.
ValueCheck = tuple[torch.Tensor, Callable[[], str]]


def check_offsets(offsets: Sequence[int]) -> tuple[int, ...]:
    """Fixed diagonal offsets as a tuple of ints >= 0; a clear error otherwise."""
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Sequence):
        raise TypeError(f"offsets must be a sequence of ints, got {type(offsets).__name__}")
    out = []
    for o in offsets:
        if isinstance(o, bool) or not isinstance(o, numbers.Integral):
            raise TypeError(f"offsets must hold ints, got {o!r}")
        if o < 0:
            raise ValueError(f"offsets must be >= 0 (key i - o for query i), got {o}")
        out.append(int(o))
    return tuple(out)


def _is_int_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


@dataclass(frozen=True)
class SideInputs:
    """Per-key and per-row inputs of one batch of sequences, on one device.

    Attributes:
        batch, k_len: the ``B`` and ``Nk`` they were built for.
        key_padding_mask: ``[B, Nk]`` bool (True = attend), or None when nothing is padded.
        first_key: ``[B]`` int32, each row's first attendable key (``Nk`` where there is none).
        token_ids: ``[B, Nk]`` int32 token ids (token-match statistics), or None.
        prev_token_ids: ``[B, Nk]`` int32, ``token_ids[j-1]`` where key ``j-1`` exists and is
            attendable, else -1 (matches no token); None without ``token_ids``.
        probe_keys: ``[B, P]`` int32 absolute key positions, or None.
        span: ``[B, 2]`` int64 key range ``[start, end)`` per sequence (the ``span`` statistic),
            ``0 <= start <= end <= k_len``, or None.
        query_weight: ``[B, Nq]`` float32 weight of each query row in ``key_mass`` (finite,
            >= 0; 0 = the row does not count), or None (every row weighs 1). Read only by calls
            with ``key_mass=True``.
        query_log2_weight: ``log2(query_weight)`` (-inf where 0), for the Triton key-mass pass;
            None without ``query_weight``.
        padding_int8: ``key_padding_mask`` as the ``[B, Nk]`` int8 the kernels read (made once
            by ``build``; see ``kernel_padding_mask``), or None.
        derived: what launches derive from these inputs and reuse (the token-match kernel's
            sorted orders, ``derived_once``): every layer of a forward shares them.

    The tensors are read-only once built: nothing checks them again, and ``derived`` is not
    recomputed.
    """

    batch: int
    k_len: int
    key_padding_mask: Optional[torch.Tensor]
    first_key: torch.Tensor
    token_ids: Optional[torch.Tensor] = None
    prev_token_ids: Optional[torch.Tensor] = None
    probe_keys: Optional[torch.Tensor] = None
    span: Optional[torch.Tensor] = None
    query_weight: Optional[torch.Tensor] = None
    query_log2_weight: Optional[torch.Tensor] = None
    padding_int8: Optional[torch.Tensor] = None
    derived: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        *,
        batch: int,
        k_len: int,
        device: torch.device,
        key_padding_mask: Optional[torch.Tensor] = None,
        token_ids: Optional[torch.Tensor] = None,
        probe_keys: Optional[torch.Tensor] = None,
        span: Optional[torch.Tensor] = None,
        query_weight: Optional[torch.Tensor] = None,
    ) -> "SideInputs":
        """Validate and convert the side inputs of ``batch`` rows of ``k_len`` keys on ``device``.

        The value checks (``token_ids`` >= 0, ``probe_keys`` and ``span`` in range, a finite
        ``query_weight`` >= 0) read tensor values: one host synchronisation for all of them, none
        without those inputs (padding needs none). Build once per forward, not per layer.
        ``query_weight`` (the ``key_mass_queries`` argument) is ``[B, Nq]`` float or bool; its
        length is checked against the queries by ``check_matches``."""
        B, Nk = batch, k_len
        checks: list[ValueCheck] = []
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
                raise TypeError("key_padding_mask must be a bool tensor [batch, k_len] (True = attend)")
            if tuple(key_padding_mask.shape) != (B, Nk):
                raise ValueError(f"key_padding_mask must have shape {(B, Nk)}, got {tuple(key_padding_mask.shape)}")
            key_padding_mask = key_padding_mask.to(device)
        if token_ids is not None:
            if not _is_int_tensor(token_ids):
                raise TypeError("token_ids must be an integer tensor [batch, k_len]")
            if tuple(token_ids.shape) != (B, Nk):
                raise ValueError(f"token_ids must have shape {(B, Nk)} (one id per key), got {tuple(token_ids.shape)}")
            token_ids = token_ids.to(device)  # every check on one device: read with one synchronisation
            if token_ids.numel():
                checks += [(token_ids.min() < 0, lambda: "token_ids must be non-negative token ids"),
                           (token_ids.max() > torch.iinfo(torch.int32).max, lambda: "token_ids must fit in int32")]
            token_ids = token_ids.to(device=device, dtype=torch.int32).contiguous()
        if probe_keys is not None:
            if not _is_int_tensor(probe_keys):
                raise TypeError("probe_keys must be an integer tensor [batch, n_probes] of key positions")
            if probe_keys.dim() != 2 or probe_keys.shape[0] != B or probe_keys.shape[1] == 0:
                raise ValueError(f"probe_keys must have shape ({B}, n_probes >= 1), got {tuple(probe_keys.shape)}")
            keys = probe_keys = probe_keys.to(device)
            checks.append(((keys.min() < 0) | (keys.max() >= Nk), lambda: f"probe_keys must be key positions in "
                           f"[0, {Nk}), got values in [{int(keys.min())}, {int(keys.max())}]"))
            probe_keys = probe_keys.to(device=device, dtype=torch.int32).contiguous()
        if span is not None:
            span = span.to(device)
            checks += span_checks(span, B, Nk)
            span = span.to(torch.int64).contiguous()
        if query_weight is not None:
            query_weight = query_weight.to(device) if isinstance(query_weight, torch.Tensor) else query_weight
            checks += query_weight_checks(query_weight, B)
            query_weight = query_weight.to(torch.float32).contiguous()
        raise_failed(checks)
        return cls(
            batch=B, k_len=Nk, key_padding_mask=key_padding_mask,
            first_key=first_attendable_key(key_padding_mask, B, Nk, device),
            token_ids=token_ids,
            prev_token_ids=previous_token_ids(token_ids, key_padding_mask) if token_ids is not None else None,
            probe_keys=probe_keys,
            span=span,
            query_weight=query_weight,
            query_log2_weight=query_weight.log2() if query_weight is not None else None,
            padding_int8=key_padding_mask.to(torch.int8) if key_padding_mask is not None else None,
        )

    def kernel_padding_mask(self) -> Any:
        """The ``[B, Nk]`` int8 padding mask (1 = attend) the kernels read, or None when nothing is
        padded: the one ``build`` made, else converted here (side inputs made field by field,
        e.g. ``kernels.aot``'s shape-only ones)."""
        if self.key_padding_mask is None:
            return None
        return self.padding_int8 if self.padding_int8 is not None else self.key_padding_mask.to(torch.int8)

    def derived_once(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """``make()``, computed at the first call with ``key`` and reused by the later ones (the
        other layers of a forward)."""
        if key not in self.derived:
            self.derived[key] = make()
        return self.derived[key]

    def check_matches(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """Raise unless these side inputs were built for ``q``'s batch, ``k``'s keys and device."""
        B, Nk = q.shape[0], k.shape[2]
        if (self.batch, self.k_len) != (B, Nk):
            raise ValueError(f"side_inputs were built for (batch, k_len) = {(self.batch, self.k_len)}, "
                             f"this call has {(B, Nk)}")
        if self.first_key.device != q.device:
            raise ValueError(f"side_inputs are on {self.first_key.device}, q on {q.device}")
        if self.query_weight is not None and self.query_weight.shape[1] != q.shape[2]:
            raise ValueError(f"key_mass_queries (query_weight) must have shape {(B, q.shape[2])} (one weight per "
                             f"query row), got {tuple(self.query_weight.shape)}")


def query_weight_checks(weight, batch: int) -> list[ValueCheck]:
    """The value checks of a query weight (``raise_failed``); a clear error at once for a bad type
    or shape."""
    name = "key_mass_queries (query_weight)"
    if not isinstance(weight, torch.Tensor) or not (weight.dtype.is_floating_point or weight.dtype == torch.bool):
        got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise TypeError(f"{name} must be a float or bool tensor [batch, q_len] (one weight per query row), got {got}")
    if weight.dim() != 2 or weight.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch}, q_len), got {tuple(weight.shape)}")
    if weight.dtype == torch.bool or not weight.numel():
        return []
    return [(~weight.isfinite().all(), lambda: f"{name} must be finite"),
            (weight.min() < 0, lambda: f"{name} must be >= 0 (0 = the query row does not count), "
                                       f"got {float(weight.min())}")]


def check_span(span, batch: int, k_len: int) -> torch.Tensor:
    """``span`` as given if it is an integer ``[batch, 2]`` tensor of key ranges
    ``0 <= start <= end <= k_len``; a clear error otherwise."""
    raise_failed(span_checks(span, batch, k_len))
    return span


def span_checks(span, batch: int, k_len: int) -> list[ValueCheck]:
    """The value check of a span (``raise_failed``); a clear error at once for a bad type or shape."""
    if not _is_int_tensor(span):
        raise TypeError("span must be an integer tensor [batch, 2] of key ranges [start, end)")
    if tuple(span.shape) != (batch, 2):
        raise ValueError(f"span must have shape {(batch, 2)} (one [start, end) per sequence), got {tuple(span.shape)}")
    if not span.numel():
        return []
    start, end = span[:, 0], span[:, 1]
    bad = (start.min() < 0) | (end.max() > k_len) | (start > end).any()
    return [(bad, lambda: f"span must hold key ranges 0 <= start <= end <= {k_len}, got {span.tolist()}")]


def raise_failed(checks: Sequence[ValueCheck]) -> None:
    """Raise ValueError with the message of the first failed check. All checks are read with one
    host synchronisation (none when there are no checks)."""
    if not checks:
        return
    failed = torch.stack([bad.reshape(()) for bad, _ in checks]).tolist()
    for is_bad, (_, message) in zip(failed, checks):
        if is_bad:
            raise ValueError(message())


def first_attendable_key(key_padding_mask: Optional[torch.Tensor], batch: int, k_len: int, device) -> torch.Tensor:
    """``[B]`` int32: index of each row's first attendable key, ``k_len`` where there is none."""
    if key_padding_mask is None:
        return torch.zeros(batch, dtype=torch.int32, device=device)
    first = key_padding_mask.long().argmax(-1)
    return torch.where(key_padding_mask.any(-1), first, torch.full_like(first, k_len)).to(torch.int32)


def previous_token_ids(token_ids: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``tok[j-1]`` where key j-1 exists and is attendable, else -1 (matches no token)."""
    prev = torch.full_like(token_ids, -1)
    prev[:, 1:] = token_ids[:, :-1]
    if key_padding_mask is not None:
        prev[:, 1:] = torch.where(key_padding_mask[:, :-1], prev[:, 1:], -1)
    return prev
