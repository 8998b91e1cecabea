"""Atomic file writes, for every output directory (scans, profiles).

Every write goes to a hidden temporary file (``.name.<random>.tmp``) in the target's folder and
is moved into place with ``os.replace``, so a reader, or a run killed at any moment, sees the old
file or the new one, never a partial file. Files get mode ``0o666`` minus the umask, like any
file the user creates (``tempfile.mkstemp`` would make them ``0o600``, unreadable to others on a
shared cluster).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


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
