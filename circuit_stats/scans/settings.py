"""A scan's settings, checked before anything is loaded or written, and compared on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..protocols import get_protocol
from .loading import DTYPES


class SettingsError(ValueError):
    """A bad scan setting; the message names it (the CLI exits with status 2)."""


def normalised_model(model_or_dir: Union[str, Path]) -> str:
    """A hub id as given; a local directory as its absolute path (``dir/``, ``./dir`` and
    ``/abs/dir`` are one directory)."""
    path = Path(model_or_dir)
    return str(path.resolve()) if path.is_dir() else str(model_or_dir)


def check_device(device: Optional[str]) -> Optional[str]:
    """``device`` if this machine has it (``cuda`` needs a GPU, ``cuda:3`` four of them)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SettingsError(f"--device {device!r} is not a device name (e.g. cpu, cuda, cuda:1): {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"--device {device!r}: no CUDA GPU is available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SettingsError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"--device {device!r}: MPS is not available on this machine")
    return device


def check_settings(protocol: str, options: Mapping[str, Any], *, dtype: Optional[str] = None,
                   device: Optional[str] = None, batch_size: Optional[int] = None, prefetch: int = 0,
                   max_consecutive_failures: int = 3, tokenizer: Optional[str] = None) -> dict[str, Any]:
    """Every setting checked without a model; returns the protocol's options resolved against
    its defaults. Raises :class:`SettingsError` naming the setting."""
    try:
        spec = get_protocol(protocol)
    except ValueError as err:
        raise SettingsError(f"--protocol: {err}") from None
    try:
        resolved = spec.check_options(dict(options))
    except (ValueError, TypeError) as err:
        raise SettingsError(f"--option: {err}") from None
    if tokenizer is not None:
        if not spec.takes_texts:
            raise SettingsError(f"--tokenizer: protocol {protocol!r} generates its own token ids; it takes no tokenizer")
        if not isinstance(tokenizer, str) or not tokenizer.strip():
            raise SettingsError(f"--tokenizer must be 'bytes' or a tokenizer name or path, got {tokenizer!r}")
    if dtype is not None and dtype not in DTYPES:
        raise SettingsError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    check_device(device)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise SettingsError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise SettingsError(f"--prefetch must be an integer >= 0, got {prefetch!r}")
    if isinstance(max_consecutive_failures, bool) or not isinstance(max_consecutive_failures, int) \
            or max_consecutive_failures < 1:
        raise SettingsError(f"--max-consecutive-failures must be an integer >= 1, got {max_consecutive_failures!r}")
    return resolved


def comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(dict(settings), default=str))


def differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Human-readable differences, one per setting (options compared key by key)."""
    out = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{key} {k!r}: {a.get(k)!r} there, {b.get(k)!r} here")
        else:
            out.append(f"{key}: {a!r} there, {b!r} here")
    return out
