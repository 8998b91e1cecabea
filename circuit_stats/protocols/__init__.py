"""Head-scoring protocols. Each module declares a ``PROTOCOL`` (see ``spec.Protocol``)."""

from . import natural, repeat, retrieval, sink, xu2026
from .spec import Protocol

PROTOCOLS: dict[str, Protocol] = {m.PROTOCOL.name: m.PROTOCOL for m in (xu2026, repeat, sink, natural, retrieval)}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; a clear error naming the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


__all__ = ["PROTOCOLS", "Protocol", "get_protocol"]
