"""One scan output directory: its layout, its locks, and the state read back from its files.

Layout of ``DIR``::

    DIR/settings.json                    model, protocol, resolved options, dtype (fixed by the first run)
    DIR/results.parquet/<rev>.parquet    one part per finished revision: the table, a parquet
                                         dataset (``pd.read_parquet(DIR / "results.parquet")``)
    DIR/failed/<rev>.json                one file per failed revision (error, step, tokens)
    DIR/weights.json                     weights digest per revision (integrity checks)
    DIR/status.json                      done / duplicates / failed, rebuilt at the end of every run
    DIR/.locks/                          filelock files (one per revision being scanned)

Every file is written atomically and a finished revision is exactly one file, so a run killed at
any moment loses at most the revisions in flight, and the table read at any moment holds every
finished revision once. Processes scanning into one directory claim a revision with a
non-blocking file lock before fetching it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd
from filelock import FileLock, Timeout

from .catalog import Revision
from .files import parquet_parts, read_json, safe_name, write_json, write_parquet
from .settings import SettingsError, differences

META_COLUMNS = ["model", "revision", "step", "tokens", "protocol"]
INTEGRITY_COLUMNS = ["weights_sha256", "duplicate_of"]
TABLE = "results.parquet"


class ScanDirectory:
    """The files of one scan (``out``) with fixed ``settings``: paths, locks, parts and failures."""

    def __init__(self, out: Path, settings: dict):
        self.out, self.settings = Path(out), settings
        self._parts: dict[Path, tuple[int, pd.DataFrame]] = {}  # parquet part -> (mtime, frame)
        self._held: dict[str, FileLock] = {}

    # -- layout
    @property
    def table_dir(self) -> Path:
        return self.out / TABLE

    def part_path(self, revision: str) -> Path:
        return self.table_dir / f"{safe_name(revision)}.parquet"

    def failed_path(self, revision: str) -> Path:
        return self.out / "failed" / f"{safe_name(revision)}.json"

    def lock(self, name: str) -> FileLock:
        (self.out / ".locks").mkdir(parents=True, exist_ok=True)
        return FileLock(self.out / ".locks" / f"{name}.lock")

    def check(self) -> None:
        """Refuse a directory holding another scan (or an older layout), before writing anything."""
        if (self.out / "manifest.json").exists() or (self.out / TABLE).is_file():
            raise SettingsError(f"--out {self.out} holds a scan written by an older circuit-stats (manifest.json); "
                                "use another --out")
        stored = read_json(self.out / "settings.json")
        if stored is not None and stored != self.settings:
            diff = "; ".join(differences(stored, self.settings))
            raise SettingsError(f"--out {self.out} holds a scan with other settings ({diff}); use another --out "
                                "or delete it")

    def open(self) -> None:
        """Create the directory and its ``settings.json`` (checked again under the lock: another
        process may have started the directory meanwhile)."""
        self.out.mkdir(parents=True, exist_ok=True)
        with self.lock("settings"):
            self.check()
            if not (self.out / "settings.json").exists():
                write_json(self.out / "settings.json", self.settings)

    # -- claims: one process per revision
    def claim(self, revision: str) -> bool:
        """Take the revision's lock without waiting; False if another process holds it or it is done."""
        lock = self.lock(safe_name(revision))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        if self.part_path(revision).exists():  # finished by another process meanwhile
            lock.release()
            return False
        self._held[revision] = lock
        return True

    def unclaim(self, revision: str) -> None:
        lock = self._held.pop(revision, None)
        if lock is not None:
            lock.release()

    def unclaim_all(self) -> None:
        for revision in list(self._held):
            self.unclaim(revision)

    # -- state, read from the files (other processes write here too)
    def done(self, catalog: Iterable[Revision]) -> set[str]:
        present = {p.stem for p in parquet_parts(self.table_dir)}
        return {r.revision for r in catalog if safe_name(r.revision) in present}

    def failed(self) -> dict[str, str]:
        out = {}
        for p in sorted((self.out / "failed").glob("*.json")):
            rec = read_json(p)
            if rec and not self.part_path(rec["revision"]).exists():
                out[rec["revision"]] = rec.get("error", "")
        return out

    def drop_stale_failures(self) -> None:
        """Remove failure records of revisions that have since finished (a kill can leave one)."""
        for p in (self.out / "failed").glob("*.json"):
            rec = read_json(p)
            if rec and self.part_path(rec["revision"]).exists():
                p.unlink(missing_ok=True)

    def results(self, include_duplicates: bool = True) -> pd.DataFrame:
        """Every finished revision, one row per (revision, layer, head), in training order."""
        frames = []
        for p in parquet_parts(self.table_dir):
            mtime = p.stat().st_mtime_ns
            if p not in self._parts or self._parts[p][0] != mtime:
                self._parts[p] = (mtime, pd.read_parquet(p))
            frames.append(self._parts[p][1])
        if not frames:
            return pd.DataFrame(columns=META_COLUMNS + INTEGRITY_COLUMNS + ["layer", "head", "label"])
        df = pd.concat(frames, ignore_index=True)
        if not include_duplicates:
            df = df[df["duplicate_of"].isna()]
        return df.sort_values(["step", "revision", "layer", "head"], kind="stable").reset_index(drop=True)

    # -- writes
    def commit(self, rev: Revision, df: pd.DataFrame, meta: dict, digest: Optional[str],
               duplicate_of: Optional[str] = None, seconds: Optional[float] = None) -> pd.DataFrame:
        """Write one revision's table as its part, ``meta`` (model, protocol) and the revision's
        step/tokens/integrity columns in front, and drop its failure record."""
        meta = {"model": meta["model"], "revision": rev.revision, "step": rev.step,
                "tokens": rev.tokens if rev.tokens is not None else pd.NA, "protocol": meta["protocol"]}
        df = df.drop(columns=[c for c in META_COLUMNS + INTEGRITY_COLUMNS if c in df], errors="ignore").copy()
        for i, (k, v) in enumerate(meta.items()):
            df.insert(i, k, v)
        df["tokens"] = df["tokens"].astype("Int64")
        df["step"] = df["step"].astype("int64")
        for c in ("model", "revision", "protocol"):
            df[c] = df[c].astype("string")
        df["weights_sha256"] = pd.array([digest] * len(df), dtype="string")
        df["duplicate_of"] = pd.array([duplicate_of] * len(df), dtype="string")
        df.attrs = {"seconds": seconds} if seconds is not None else {}
        write_parquet(self.part_path(rev.revision), df)
        self.failed_path(rev.revision).unlink(missing_ok=True)  # a kill before this: the part wins
        return df

    def record_failure(self, rev: Revision, error: str) -> None:
        write_json(self.failed_path(rev.revision), {"revision": rev.revision, "step": rev.step, "tokens": rev.tokens,
                                                    "error": error, "time": time.time()})

    def write_status(self) -> dict:
        """``status.json``, derived from the per-revision files."""
        results = self.results()
        dups = (results.loc[results["duplicate_of"].notna(), ["revision", "duplicate_of"]].drop_duplicates()
                if len(results) else pd.DataFrame(columns=["revision", "duplicate_of"]))
        status = {"settings": self.settings, "done": int(results["revision"].nunique()) if len(results) else 0,
                  "duplicates": dict(zip(dups["revision"], dups["duplicate_of"])), "failed": self.failed(),
                  "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(self.out / "status.json", status)
        return status
