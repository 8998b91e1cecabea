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

MANIFEST = "evaluation.json"


def request_key(task: str, doc_id: int, idx: int, arguments: Any) -> str:
    """``task/doc_id/idx/<12 hex of the arguments>``: names one lm-eval request."""
    digest = hashlib.sha256(json.dumps(arguments, default=str, sort_keys=True).encode()).hexdigest()[:12]
    return f"{task}/{doc_id}/{idx}/{digest}"


class EvalDir(ProfileDir):
    """``DIR/evaluation.json`` (settings, elapsed seconds), ``DIR/requests/<sha>.parquet`` (the
    request's statistics) + ``<sha>.json`` (its response, written last: the commit mark),
    ``DIR/failures.json``."""

    manifest_name = MANIFEST

    def __init__(self, root):
        super().__init__(root)
        self.parts = self.root / "requests"
        self.lock_path = self.root / ".evaluation.lock"

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

    def committed(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(every committed request's statistics rows, one row per committed request)."""
        metas = [json.loads(p.read_text()) for p in sorted(self.parts.glob("*.json"))] if self.parts.exists() else []
        stats = [pd.read_parquet(self.request_path(m["key"], ".parquet")) for m in metas]
        requests = pd.DataFrame([{k: v for k, v in m.items() if k != "response"} for m in metas])
        return (pd.concat(stats, ignore_index=True) if stats else pd.DataFrame()), requests

    def write_failure(self, key: str, error: BaseException) -> None:
        path = self.root / "failures.json"
        failures = json.loads(path.read_text()) if path.exists() else []
        failures.append({"request": key, "error": f"{type(error).__name__}: {error}"})
        atomic_write_text(path, json.dumps(failures, indent=1))

    def finish(self, elapsed: float) -> None:
        """Add ``elapsed`` seconds to the manifest."""
        manifest = json.loads((self.root / MANIFEST).read_text())
        manifest["elapsed_s"] = float(manifest.get("elapsed_s", 0.0)) + float(elapsed)
        atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=1))

    def clear_failures(self) -> None:
        (self.root / "failures.json").unlink(missing_ok=True)
