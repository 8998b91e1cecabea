"""The evaluation output directory: settings manifest, one committed part per finished request,
failures, and the final tables. Every file is written atomically (``atomic.atomic_write``), so a
killed run loses only the request in flight and a re-run with the same settings continues."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..profiling.writer import ProfileDir, atomic_write_parquet, atomic_write_text
from ..scans.sharding import Shard

MANIFEST = "evaluation.json"


def request_key(task: str, idx: int, arguments: Any) -> str:
    """``task/idx/<12 hex of the arguments>``: names one lm-eval request by its content (lm-eval
    renumbers doc ids when it runs a selection of documents, as a shard does)."""
    digest = hashlib.sha256(json.dumps(arguments, default=str, sort_keys=True).encode()).hexdigest()[:12]
    return f"{task}/{idx}/{digest}"


class EvalDir(ProfileDir):
    """``DIR/evaluation.json`` (settings, elapsed seconds), ``DIR/requests/<sha>.parquet`` (the
    request's statistics) + ``<sha>.json`` (its response, written last: the commit mark),
    ``DIR/failures.json`` (``failures.shard-I-of-N.json`` for shard I of N)."""

    manifest_name = MANIFEST

    def __init__(self, root, shard: Optional[Shard] = None):
        super().__init__(root)
        self.parts = self.root / "requests"
        # shards write into one directory at once: each has its own lock and failures file
        tag = shard.file_tag if shard is not None else ""
        self.lock_path = self.root / f".evaluation{tag}.lock"
        self.failures_path = self.root / f"failures{tag}.json"

    def request_path(self, key: str, suffix: str) -> Path:
        return self.parts / (hashlib.sha256(key.encode()).hexdigest()[:24] + suffix)

    def response(self, key: str) -> Optional[dict]:
        """The committed record of request ``key`` (``response``, ``n_tokens``...), or None."""
        path = self.request_path(key, ".json")
        return json.loads(path.read_text()) if path.exists() else None

    def write_request(self, key: str, meta: dict, stats: pd.DataFrame) -> None:
        """Commit one request: its statistics rows, then its record (the commit mark)."""
        atomic_write_parquet(self.request_path(key, ".parquet"), stats)
        atomic_write_text(self.request_path(key, ".json"), json.dumps({"key": key, **meta}))

    def request_rows(self, answered: pd.DataFrame) -> pd.DataFrame:
        """The statistics rows of the ``answered`` requests (``key, task, doc_id, request``), each
        row tagged with its task, doc_id and request."""
        frames = [pd.read_parquet(self.request_path(r.key, ".parquet")).assign(task=r.task, doc_id=r.doc_id,
                                                                              request=r.request)
                  for r in answered.itertuples()]
        return pd.concat(frames, ignore_index=True)

    def write_failure(self, key: str, error: BaseException) -> None:
        path = self.failures_path
        failures = json.loads(path.read_text()) if path.exists() else []
        failures.append({"request": key, "error": f"{type(error).__name__}: {error}"})
        atomic_write_text(path, json.dumps(failures, indent=1))

    def finish(self, elapsed: float) -> None:
        """Add ``elapsed`` seconds to the manifest."""
        manifest = json.loads((self.root / MANIFEST).read_text())
        manifest["elapsed_s"] = float(manifest.get("elapsed_s", 0.0)) + float(elapsed)
        atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=1))

    def clear_failures(self) -> None:
        self.failures_path.unlink(missing_ok=True)
