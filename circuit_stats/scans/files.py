"""Atomic file writes and reads for scan directories (``atomic.atomic_write``: a reader, or a
run killed at any moment, sees the old file or the new one, never a partial file). Its hidden
temporary files are also what pyarrow skips when it reads a folder of parquet parts as one dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..atomic import atomic_write


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
