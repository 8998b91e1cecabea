"""Scans over training checkpoints: score every head at every selected revision.

Layout of an output directory::

    DIR/manifest.json          model, protocol, options; per revision: done / failed (+ error)
    DIR/revisions/<rev>.parquet  one finished revision (written atomically)
    DIR/results.parquet        all finished revisions, one row per (revision, layer, head)

Every write goes to a temporary file first and is moved into place with ``os.replace``, so a
run killed at any moment loses at most the revision in flight and never leaves a partial table.
Re-running the same scan skips finished revisions and retries failed ones.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd
from tqdm.auto import tqdm

from ..scoring import score_heads
from .catalog import Revision, revisions, select_revisions
from .emergence import largest_jump
from .files import safe_name, write_json, write_parquet
from .loading import DTYPES, delete_cached_revision, load_revision

logger = logging.getLogger(__name__)
META_COLUMNS = ["model", "revision", "step", "tokens", "protocol"]

ScoreFn = Callable[[Revision], pd.DataFrame]


# ---------------------------------------------------------------- the scan
class Scan:
    """One scan output directory and the catalog it draws revisions from."""

    def __init__(self, model_or_dir: Union[str, Path], out: Union[str, Path], protocol: str, *,
                 catalog: Optional[Sequence[Revision]] = None, score_fn: Optional[ScoreFn] = None,
                 protocol_options: Optional[dict] = None, dtype: Optional[str] = None,
                 device: Optional[str] = None, batch_size: Optional[int] = None,
                 delete_after: bool = False, tokens_per_step: Optional[int] = None, progress: bool = True):
        self.model_id = str(model_or_dir)  # hub model id or local checkpoint directory
        self.out = Path(out)
        self.protocol = protocol
        self.options = dict(protocol_options or {})
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.dtype, self.device, self.batch_size = dtype, device, batch_size
        self.delete_after = delete_after
        self.progress = progress
        self.catalog = list(catalog) if catalog is not None else revisions(model_or_dir, tokens_per_step=tokens_per_step)
        self.score_fn = score_fn or self._load_and_score
        self.manifest = self._open_manifest()
        self._parts: Optional[dict[str, pd.DataFrame]] = None

    # -- bookkeeping
    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.json"

    def _settings(self) -> dict:
        return {"model": self.model_id, "protocol": self.protocol, "options": self.options}

    def _open_manifest(self) -> dict:
        settings = json.loads(json.dumps(self._settings(), default=str))
        if self.manifest_path.exists():
            manifest = json.loads(self.manifest_path.read_text())
            old = {k: manifest.get(k) for k in settings}
            if old != settings:
                raise ValueError(f"{self.out} holds a scan with other settings ({old}); use another --out "
                                 "or delete it")
            return manifest
        return {**settings, "revisions": {}}

    def done(self) -> set[str]:
        return {r for r, v in self.manifest["revisions"].items()
                if v.get("status") == "done" and (self.out / "revisions" / f"{safe_name(r)}.parquet").exists()}

    def failed(self) -> dict[str, str]:
        return {r: v.get("error", "") for r, v in self.manifest["revisions"].items() if v.get("status") == "failed"}

    def _finished_parts(self) -> dict[str, pd.DataFrame]:
        """Finished revisions' tables, read from disk once and then kept up to date in memory
        (results() runs after every revision: re-reading every part would be quadratic I/O)."""
        if self._parts is None:
            self._parts = {r: pd.read_parquet(self.out / "revisions" / f"{safe_name(r)}.parquet") for r in self.done()}
        return self._parts

    def results(self) -> pd.DataFrame:
        frames = list(self._finished_parts().values())
        if not frames:
            return pd.DataFrame(columns=META_COLUMNS + ["layer", "head", "label"])
        df = pd.concat(frames, ignore_index=True)
        return df.sort_values(["step", "revision", "layer", "head"], kind="stable").reset_index(drop=True)

    # -- one revision
    def _load_and_score(self, rev: Revision) -> pd.DataFrame:
        model = load_revision(self.model_id, rev.revision, dtype=DTYPES.get(self.dtype) if self.dtype else None,
                              device=self.device)
        try:
            return score_heads(model, self.protocol, batch_size=self.batch_size, progress=False, **self.options)
        finally:
            commit = getattr(model.config, "_commit_hash", None)
            del model
            if self.delete_after and not Path(self.model_id).is_dir():
                freed = delete_cached_revision(self.model_id, commit)
                logger.info("deleted %s@%s from the cache (%.1f MB)", self.model_id, rev.revision, freed / 1e6)

    def scan_one(self, rev: Revision) -> bool:
        """Score one revision and commit it; a failure is recorded and the scan goes on."""
        t0 = time.time()
        try:
            df = self.score_fn(rev)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a revision that fails to load or score
            logger.warning("revision %s failed: %s", rev.revision, err)
            self.manifest["revisions"][rev.revision] = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                                        "step": rev.step, "tokens": rev.tokens}
            write_json(self.manifest_path, self.manifest)
            return False
        meta = {"model": self.model_id, "revision": rev.revision, "step": rev.step,
                "tokens": rev.tokens if rev.tokens is not None else pd.NA, "protocol": self.protocol}
        df = df.copy()
        for i, (k, v) in enumerate(meta.items()):
            df.insert(i, k, v)
        df["tokens"] = df["tokens"].astype("Int64")
        write_parquet(self.out / "revisions" / f"{safe_name(rev.revision)}.parquet", df)
        self._finished_parts()[rev.revision] = df
        self.manifest["revisions"][rev.revision] = {"status": "done", "step": rev.step, "tokens": rev.tokens,
                                                    "seconds": round(time.time() - t0, 3)}
        write_json(self.manifest_path, self.manifest)
        write_parquet(self.out / "results.parquet", self.results())
        return True

    def run(self, selected: Sequence[Revision]) -> pd.DataFrame:
        """Scan ``selected`` in training order, skipping finished revisions."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            write_json(self.manifest_path, self.manifest)
        todo = [r for r in sorted(selected, key=lambda r: (r.step, r.revision)) if r.revision not in self.done()]
        for rev in tqdm(todo, desc=f"scan {Path(self.model_id).name}", unit="rev", disable=not self.progress):
            self.scan_one(rev)
        return self.results()

    # -- refinement
    def refine(self, max_scans: int = 32, label: Optional[str] = None) -> list[str]:
        """Bisect the largest jump in a class fraction between adjacent scanned revisions until it
        lies between adjacent catalog revisions. Returns the revisions scanned."""
        scanned: list[str] = []
        order = {r.revision: i for i, r in enumerate(sorted(self.catalog, key=lambda r: (r.step, r.revision)))}
        failed = set(self.failed())
        while len(scanned) < max_scans:
            jump = largest_jump(self.results(), label=label)
            if jump is None:
                break
            lo, hi = order.get(jump["before"]), order.get(jump["after"])
            if lo is None or hi is None:
                break
            between = [r for r in self.catalog if lo < order[r.revision] < hi and r.revision not in failed]
            if not between:
                break  # the jump lies between adjacent available checkpoints
            between.sort(key=lambda r: order[r.revision])
            mid = between[len(between) // 2]
            ok = self.scan_one(mid)
            scanned.append(mid.revision)
            if not ok:
                failed.add(mid.revision)
            label = jump["label"]  # keep following the same class
        return scanned


def scan(model_or_dir: Union[str, Path], out: Union[str, Path], *, revisions_spec: str = "all",
         protocol: str = "xu2026", refine: bool = False, limit_tokens: Optional[int] = None, **kwargs) -> pd.DataFrame:
    """Scan the selected revisions (``all``, ``paper``, ``every:N``, ``log:K`` or names) and
    optionally refine the sharpest transition. Returns the results table."""
    s = Scan(model_or_dir, out, protocol, **kwargs)
    selected = select_revisions(s.catalog, revisions_spec, s.model_id)
    if limit_tokens is not None:
        selected = [r for r in selected if r.tokens is None or r.tokens <= limit_tokens]
        s.catalog = [r for r in s.catalog if r.tokens is None or r.tokens <= limit_tokens]
    s.run(selected)
    if refine:
        s.refine()
    return s.results()

