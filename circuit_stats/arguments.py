"""Command-line settings checked before anything heavy is imported or loaded: argparse ``type=``
functions (a bad value exits 2 with ``argument --flag: ...``) and checks of paths. Imports no
torch, so ``circuit-stats --help`` and argument errors are fast."""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Callable, TypeVar, Union

from .names import PROFILE_KEY_STATISTICS, PROFILE_STATISTICS, PROTOCOL_NAMES, SINK_EPS, SINK_MIN_QUERIES

T = TypeVar("T")
STATISTICS = PROFILE_STATISTICS
__all__ = ["PROTOCOL_NAMES", "SINK_EPS", "SINK_MIN_QUERIES", "STATISTICS"]


def checked(parse: Callable[[str], T], accept: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """An argparse type: ``parse(text)`` if that works and ``accept`` takes it, else an error
    saying what was ``expected``."""

    def parse_checked(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse_checked


positive_int = checked(int, lambda n: n >= 1, "a positive integer")
nonnegative_int = checked(int, lambda n: n >= 0, "an integer >= 0")
positive_number = checked(float, lambda x: math.isfinite(x) and x > 0, "a positive number")  # e.g. 2e9
fraction = checked(float, lambda x: 0 <= x <= 1, "a number in [0, 1]")


def position_bins(text: str) -> Union[str, list]:
    """``log2``, or comma-separated integer edges ``>= 0``, strictly increasing, at least two,
    the last one may be ``inf``: ``0,64,512,inf``."""
    if text == "log2":
        return text
    parts = [p.strip() for p in text.split(",")]
    edges: list = []
    for i, p in enumerate(parts):
        if p == "inf" and i == len(parts) - 1:
            edges.append(math.inf)
        elif p.isdigit():
            edges.append(int(p))
        else:
            raise argparse.ArgumentTypeError(f"expected log2 or comma-separated integer edges >= 0 (the last may be "
                                             f"inf), e.g. 0,64,512,inf; {p!r} is not one")
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise argparse.ArgumentTypeError(f"expected at least two strictly increasing edges, e.g. 0,64,512,inf; "
                                         f"got {text!r}")
    return edges


def statistics(text: str) -> list[str]:
    """A comma list of names from ``STATISTICS`` (or the opt-in ``PROFILE_KEY_STATISTICS``)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    known = STATISTICS + PROFILE_KEY_STATISTICS
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(known)}; unknown: "
                                         f"{', '.join(unknown) or '(none given)'}")
    return names


def key_value(text: str) -> tuple[str, object]:
    """``key=value``; the value parsed as JSON when it is JSON, else kept as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def check_out_dir(out: Union[str, Path], flag: str = "--out") -> None:
    """Refuse an output directory that is a file or cannot be created or written (a read-only
    file system, no permission), before anything is loaded. Writes nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {out}: {existing} is a file, so the directory cannot be created")
    try:
        with tempfile.TemporaryFile(dir=existing):  # the only sure test (read-only mounts, ACLs, root)
            pass
    except OSError as err:
        raise ValueError(f"{flag} {out}: cannot write in {existing} ({err.strerror or err})") from None


def check_model_source(model: str, flag: str = "model") -> None:
    """A local ``save_pretrained`` folder (with ``config.json``) or something shaped like a hub id."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{flag} {model}: the folder holds no config.json (not a save_pretrained folder)")
        return
    if path.exists():
        raise ValueError(f"{flag} {model} is a file; expected a checkpoint folder or a hub model id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ValueError(f"{flag} {model}: no such folder, and not a hub model id (NAME or OWNER/NAME)") from None


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device`` and ``--no-plots``: how a model runs and whether plots are drawn
    (``profile`` and ``eval``)."""
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="default: the checkpoint's on a GPU, float32 on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--no-plots", action="store_true")
