"""The live results table of a training run: ``DIR/results.parquet`` in the checkpoint-scan format.

One row per (step, layer, head) with the scan's columns (``model``, ``revision``, ``step``,
``tokens``, ``protocol``, ``layer``, ``head``, the protocol's scores, ``label``), so that
``circuit-stats report DIR`` works on a run while it trains. ``revision`` is ``step{N}``.
``DIR/monitor.json`` records the model, protocol and options the table was scored with; a run
with other settings refuses to append to it.

Every write goes to a temporary file in ``DIR`` and is moved into place with ``os.replace``:
readers never see a partial table, and the file gets the usual permissions (the umask), so other
users can read a shared run directory.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import pandas as pd
from ..scans.directory import META_COLUMNS  # the checkpoint scan's columns before the protocol's own

logger = logging.getLogger(__name__)

TABLE_NAME = "results.parquet"
SETTINGS_NAME = "monitor.json"


def revision_name(step: int) -> str:
    """The ``revision`` value of a live row: ``step{N}`` (the Pythia branch naming)."""
    return f"step{int(step)}"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then move it into place.

    The temporary file is created by ``write`` itself (not ``mkstemp``, which makes it 0600), so
    the result has the permissions the umask gives any new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class LiveResults:
    """The results table of one run directory, kept in memory and rewritten atomically.

    Args:
        out: the run directory (created on the first write).
        model: the ``model`` column (a name for the run's model).
        protocol: the protocol name (``protocol`` column).
        options: the protocol options the scores use (recorded in ``monitor.json``).
    """

    def __init__(self, out: Union[str, Path], *, model: str, protocol: str, options: Mapping):
        self.out = Path(out)
        self.settings = json.loads(json.dumps({"model": model, "protocol": protocol, "options": dict(options)},
                                              default=str))
        self._check_settings()
        self.path = self.out / TABLE_NAME
        self._frame: Optional[pd.DataFrame] = pd.read_parquet(self.path) if self.path.exists() else None

    def _check_settings(self) -> None:
        path = self.out / SETTINGS_NAME
        if path.exists():
            old = json.loads(path.read_text())
            if old != self.settings:
                raise ValueError(f"{self.out} holds a run scored with other settings ({old}, now {self.settings}); "
                                 "use another output directory or delete it")
        elif (self.out / TABLE_NAME).exists():
            raise ValueError(f"{self.out / TABLE_NAME} exists but {SETTINGS_NAME} does not: it is not a live "
                             "circuit-stats table (a checkpoint scan?); use another output directory")

    @property
    def frame(self) -> pd.DataFrame:
        """The table so far, in training order (empty with the meta columns when nothing is scored)."""
        if self._frame is None:
            return pd.DataFrame(columns=META_COLUMNS + ["layer", "head", "label"])
        return self._frame

    def steps(self) -> set[int]:
        """Steps already in the table."""
        return set() if self._frame is None else {int(s) for s in self._frame["step"].unique()}

    def drop_from(self, step: int) -> int:
        """Remove rows at ``step`` and later (a killed run's rows past the checkpoint it resumes
        from); returns the number of steps removed."""
        if self._frame is None:
            return 0
        late = self._frame["step"] >= step
        removed = self._frame.loc[late, "step"].nunique()
        if removed:
            self._frame = self._frame.loc[~late].reset_index(drop=True)
            self._write()
        return int(removed)

    def add(self, step: int, tokens: Optional[int], scores: pd.DataFrame) -> pd.DataFrame:
        """Append one step's per-(layer, head) ``scores`` and rewrite the table; returns the new rows."""
        if step in self.steps():
            raise ValueError(f"step {step} is already in {self.path}")
        meta = {"model": self.settings["model"], "revision": revision_name(step), "step": int(step),
                "tokens": pd.NA if tokens is None else int(tokens), "protocol": self.settings["protocol"]}
        rows = scores.copy()
        rows.attrs = {}
        for i, (key, value) in enumerate(meta.items()):
            rows.insert(i, key, value)
        rows["tokens"] = rows["tokens"].astype("Int64")
        frame = rows if self._frame is None else pd.concat([self._frame, rows], ignore_index=True)
        self._frame = frame.sort_values(["step", "layer", "head"], kind="stable").reset_index(drop=True)
        self._write()
        return rows

    def _write(self) -> None:
        settings = self.out / SETTINGS_NAME
        if not settings.exists():
            atomic_write(settings, lambda tmp: Path(tmp).write_text(json.dumps(self.settings, indent=1)))
        atomic_write(self.path, lambda tmp: self.frame.to_parquet(tmp, index=False))
