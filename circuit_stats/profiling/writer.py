"""The profile output directory: settings manifest, one part per finished document, failures,
document locks, and the combined ``profile.parquet``. Every file is written atomically
(``atomic.atomic_write``: a temporary file, then ``os.replace``; modes follow the umask), so a
killed run leaves only complete files and a re-run continues."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import pandas as pd
from filelock import FileLock, Timeout

from ..atomic import atomic_write
from ..sharding import Shard

MANIFEST = "profile.json"
RESULT = "profile.parquet"
FAILURES = "failures.json"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


class ProfileDir:
    """``DIR/profile.json`` (settings, elapsed seconds), ``DIR/parts/<doc>.parquet`` (and, with
    the key statistics, the document's per-token sink sums in ``DIR/parts/sinks/<doc>.parquet``),
    ``DIR/failures.json`` (``failures.shard-I-of-N.json`` while shard I of N runs; merged into
    ``failures.json``), ``DIR/profile.parquet``, and ``DIR/.locks/`` (a document's lock while a
    process profiles it: processes sharing the directory never profile one document twice)."""

    manifest_name = MANIFEST

    def __init__(self, root: Union[str, Path], shard: Shard = Shard()):
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.locks = self.root / ".locks"
        self.failures_path = self.root / f"failures{shard.file_tag}.json"
        self.root.mkdir(parents=True, exist_ok=True)

    def part_path(self, doc_index: int) -> Path:
        return self.parts / f"{doc_index:07d}.parquet"

    def sink_part_path(self, doc_index: int) -> Path:
        return self.parts / "sinks" / f"{doc_index:07d}.parquet"

    def lock(self, name: str) -> FileLock:
        self.locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.locks / f"{name}.lock"))

    def start(self, settings: dict) -> set[int]:
        """Write the manifest, or check that an existing one has the same settings (under a lock:
        shards start at once); return the indices of documents already done."""
        manifest = self.root / self.manifest_name
        with self.lock("manifest"):
            if manifest.exists():
                old = json.loads(manifest.read_text())
                if old.get("settings") != settings:
                    diff = sorted(k for k in set(old.get("settings", {})) | set(settings)
                                  if old.get("settings", {}).get(k) != settings.get(k))
                    raise ValueError(f"{self.root} holds a profile made with other settings ({diff} differ); "
                                     "use a new --out directory or delete it")
            else:
                atomic_write_text(manifest, json.dumps({"settings": settings, "elapsed_s": 0.0}, indent=1))
        return self.done()

    def done(self) -> set[int]:
        """Indices of the documents whose part is committed."""
        return {int(p.stem) for p in self.parts.glob("*.parquet") if p.stem.isdigit()} if self.parts.exists() else set()

    @contextmanager
    def claim(self, doc_index: int) -> Iterator[bool]:
        """Hold document ``doc_index``'s lock while the block runs; ``False`` (and no lock) when
        another process holds it or its part is committed. The lock file goes once the part is."""
        lock = self.lock(f"{doc_index:07d}")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield not self.part_path(doc_index).exists()
        finally:
            lock.release()
            if self.part_path(doc_index).exists():
                Path(lock.lock_file).unlink(missing_ok=True)

    def write_part(self, doc_index: int, df: pd.DataFrame, sinks: Optional[pd.DataFrame] = None) -> None:
        """Commit a document: its sink sums first (when given), then its rows (the commit point)."""
        if sinks is not None:
            self.sink_part_path(doc_index).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_parquet(self.sink_part_path(doc_index), sinks)
        atomic_write_parquet(self.part_path(doc_index), df)

    def sink_parts(self) -> Iterator[pd.DataFrame]:
        """The sink sums of every committed document, in document order, read one at a time."""
        done = sorted(self.done())
        missing = [i for i in done if not self.sink_part_path(i).exists()]
        if missing:
            raise RuntimeError(f"{self.root}: documents {missing[:10]} are committed without their sink sums "
                               f"({self.sink_part_path(missing[0])}); delete their parts to profile them again")
        return (pd.read_parquet(self.sink_part_path(i)) for i in done)

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        """``DIR/name``, a merged table (atomically)."""
        atomic_write_parquet(self.root / name, df)
        return self.root / name

    def failures(self) -> dict[int, dict]:
        """This process's failures file (its shard's, or ``failures.json``)."""
        return read_failures(self.failures_path)

    def write_failures(self, failures: dict[int, dict]) -> None:
        atomic_write_text(self.failures_path, json.dumps([failures[i] for i in sorted(failures)], indent=1))

    def all_failures(self) -> dict[int, dict]:
        """The failures of every shard and run, less the documents committed since."""
        done = self.done()
        merged: dict[int, dict] = {}
        for path in sorted(self.root.glob("failures*.json")):
            merged.update({i: f for i, f in read_failures(path).items() if i not in done})
        return merged

    def complete(self, n_documents: int) -> bool:
        """Every document committed or recorded as failed (by any shard)."""
        return set(range(n_documents)) <= self.done() | set(self.all_failures())

    def elapsed(self) -> float:
        return float(json.loads((self.root / self.manifest_name).read_text()).get("elapsed_s", 0.0))

    def add_elapsed(self, seconds: float) -> None:
        """Add ``seconds`` (of one process's profiling) to the manifest."""
        with self.lock("manifest"):
            manifest = json.loads((self.root / self.manifest_name).read_text())
            manifest["elapsed_s"] = float(manifest.get("elapsed_s", 0.0)) + float(seconds)
            atomic_write_text(self.root / self.manifest_name, json.dumps(manifest, indent=1))

    def rows(self, doc_indices: Optional[Iterable[int]] = None) -> pd.DataFrame:
        """The committed rows (of ``doc_indices``), in document order; empty when none is committed."""
        done = self.done()
        wanted = sorted(done if doc_indices is None else done & set(doc_indices))
        frames = [pd.read_parquet(self.part_path(i)) for i in wanted]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def merge(self) -> tuple[pd.DataFrame, dict[int, dict]]:
        """Combine the parts (document order) into ``profile.parquet`` and every shard's failures
        into ``failures.json`` (removed when none is left); call under ``lock("merge")``."""
        failures = self.all_failures()
        if failures:
            atomic_write_text(self.root / FAILURES, json.dumps([failures[i] for i in sorted(failures)], indent=1))
        else:
            (self.root / FAILURES).unlink(missing_ok=True)
        df = self.rows()
        if df.empty:
            raise RuntimeError(f"no document could be profiled; see {self.root / FAILURES}")
        atomic_write_parquet(self.root / RESULT, df)
        return df, failures


def read_failures(path: Path) -> dict[int, dict]:
    """``doc_index -> {doc_index, doc_id, error}`` of one failures file (empty when it is missing)."""
    return {int(f["doc_index"]): f for f in json.loads(path.read_text())} if path.exists() else {}
