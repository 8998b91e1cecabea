"""The profile output directory: settings manifest, one part per finished document, failures,
and the combined ``profile.parquet``. Every file is written atomically (``atomic.atomic_write``:
a temporary file, then ``os.replace``; modes follow the umask), so a killed run leaves only
complete files and a re-run continues."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import pandas as pd

from ..atomic import atomic_write

MANIFEST = "profile.json"
RESULT = "profile.parquet"
FAILURES = "failures.json"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


class ProfileDir:
    """``DIR/profile.json`` (settings, elapsed seconds), ``DIR/parts/<doc>.parquet``,
    ``DIR/failures.json``, ``DIR/profile.parquet``."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.lock_path = self.root / ".profile.lock"
        self.root.mkdir(parents=True, exist_ok=True)

    def part_path(self, doc_index: int) -> Path:
        return self.parts / f"{doc_index:07d}.parquet"

    def start(self, settings: dict) -> set[int]:
        """Write the manifest, or check that an existing one has the same settings; return the
        indices of documents already done."""
        manifest = self.root / MANIFEST
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("settings") != settings:
                diff = sorted(k for k in set(old.get("settings", {})) | set(settings)
                              if old.get("settings", {}).get(k) != settings.get(k))
                raise ValueError(f"{self.root} holds a profile made with other settings ({diff} differ); "
                                 "use a new --out directory or delete it")
        else:
            atomic_write_text(manifest, json.dumps({"settings": settings, "elapsed_s": 0.0}, indent=1))
        done = set()
        if self.parts.exists():
            for p in self.parts.glob("*.parquet"):
                if p.stem.isdigit():
                    done.add(int(p.stem))
        return done

    def write_part(self, doc_index: int, df: pd.DataFrame) -> None:
        atomic_write_parquet(self.part_path(doc_index), df)

    def failures(self) -> dict[int, dict]:
        path = self.root / FAILURES
        if not path.exists():
            return {}
        return {int(f["doc_index"]): f for f in json.loads(path.read_text())}

    def write_failures(self, failures: dict[int, dict]) -> None:
        atomic_write_text(self.root / FAILURES, json.dumps([failures[i] for i in sorted(failures)], indent=1))

    def elapsed(self) -> float:
        return float(json.loads((self.root / MANIFEST).read_text()).get("elapsed_s", 0.0))

    def finish(self, elapsed: float) -> pd.DataFrame:
        """Combine the parts (document order) into ``profile.parquet``; add ``elapsed`` seconds."""
        manifest = json.loads((self.root / MANIFEST).read_text())
        manifest["elapsed_s"] = float(manifest.get("elapsed_s", 0.0)) + float(elapsed)
        atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=1))
        files = sorted(self.parts.glob("*.parquet")) if self.parts.exists() else []
        if not files:
            raise RuntimeError(f"no document could be profiled; see {self.root / FAILURES}")
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        atomic_write_parquet(self.root / RESULT, df)
        return df
