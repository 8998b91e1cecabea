"""Head-scoring protocols. Each module declares a ``PROTOCOL`` (see ``spec.Protocol``); adding a
protocol is one new module plus its line in ``MODULES``."""

from . import natural, repeat, retrieval, sink, xu2026
from .spec import Protocol

MODULES = (xu2026, repeat, sink, natural, retrieval)
PROTOCOLS: dict[str, Protocol] = {m.PROTOCOL.name: m.PROTOCOL for m in MODULES}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; a clear error naming the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


__all__ = ["PROTOCOLS", "Protocol", "get_protocol"]
