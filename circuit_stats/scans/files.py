"""Atomic file writes and reads for scan directories.

Every write goes to a hidden temporary file (``.name.<random>.tmp``) in the target's folder and
is moved into place with ``os.replace``, so a reader, or a run killed at any moment, sees the old
file or the new one, never a partial file. Hidden files are also what pyarrow skips when it reads
a folder of parquet parts as one dataset. Files get mode ``0o666`` minus the umask, like any
file the user creates (``tempfile.mkstemp`` would make them ``0o600``, unreadable to others on a
shared cluster).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move ``tmp_path`` onto ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, default=str)))


def read_json(path: Path) -> Optional[Any]:
    """The JSON in ``path``, None if there is no such file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def parquet_parts(folder: Path) -> list[Path]:
    """The visible ``*.parquet`` parts of a dataset folder (temporary files are hidden)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def safe_name(revision: str) -> str:
    """A file-name-safe spelling of a revision name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in revision)
