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
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd
import torch
from tqdm.auto import tqdm

from .labels import UNCLASSIFIED
from .models.revisions import Revision, revisions, select_revisions
from .scoring import score_heads

logger = logging.getLogger(__name__)
META_COLUMNS = ["model", "revision", "step", "tokens", "protocol"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

ScoreFn = Callable[[Revision], pd.DataFrame]


# ---------------------------------------------------------------- atomic files
def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, default=str)))


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    _atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def _safe_name(revision: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in revision)


# ---------------------------------------------------------------- model loading
def load_revision(model_or_dir: Union[str, Path], revision: str, *, dtype: Optional[torch.dtype] = None,
                  device: Optional[str] = None):
    """A checkpoint with ``attn_implementation="circuit_stats"``: a sub-folder of a local
    directory, or a hub revision via ``from_pretrained(..., revision=...)``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the scan has its own progress bar
    path = Path(model_or_dir)
    kwargs = dict(attn_implementation="circuit_stats")
    if dtype is not None:
        kwargs["dtype"] = dtype
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path / revision, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_or_dir), revision=revision, **kwargs)
    if device is not None:
        model.to(device)
    return model.eval()


def delete_cached_revision(model_id: str, commit_hash: Optional[str]) -> int:
    """Remove one downloaded revision from the Hugging Face cache; returns bytes freed."""
    if not commit_hash:
        return 0
    from huggingface_hub import scan_cache_dir

    cache = scan_cache_dir()
    hashes = [rev.commit_hash for repo in cache.repos if repo.repo_id == model_id
              for rev in repo.revisions if rev.commit_hash == commit_hash]
    if not hashes:
        return 0
    strategy = cache.delete_revisions(*hashes)
    strategy.execute()
    return int(strategy.expected_freed_size)


# ---------------------------------------------------------------- the scan
class Scan:
    """One scan output directory and the catalog it draws revisions from."""

    def __init__(self, model_or_dir: Union[str, Path], out: Union[str, Path], protocol: str, *,
                 catalog: Optional[Sequence[Revision]] = None, score_fn: Optional[ScoreFn] = None,
                 protocol_options: Optional[dict] = None, dtype: Optional[str] = None,
                 device: Optional[str] = None, batch_size: Optional[int] = None,
                 delete_after: bool = False, tokens_per_step: Optional[int] = None, progress: bool = True):
        self.model = str(model_or_dir)
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
        return {"model": self.model, "protocol": self.protocol, "options": self.options}

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
                if v.get("status") == "done" and (self.out / "revisions" / f"{_safe_name(r)}.parquet").exists()}

    def failed(self) -> dict[str, str]:
        return {r: v.get("error", "") for r, v in self.manifest["revisions"].items() if v.get("status") == "failed"}

    def _finished_parts(self) -> dict[str, pd.DataFrame]:
        """Finished revisions' tables, read from disk once and then kept up to date in memory
        (results() runs after every revision: re-reading every part would be quadratic I/O)."""
        if self._parts is None:
            self._parts = {r: pd.read_parquet(self.out / "revisions" / f"{_safe_name(r)}.parquet") for r in self.done()}
        return self._parts

    def results(self) -> pd.DataFrame:
        frames = list(self._finished_parts().values())
        if not frames:
            return pd.DataFrame(columns=META_COLUMNS + ["layer", "head", "label"])
        df = pd.concat(frames, ignore_index=True)
        return df.sort_values(["step", "revision", "layer", "head"], kind="stable").reset_index(drop=True)

    # -- one revision
    def _load_and_score(self, rev: Revision) -> pd.DataFrame:
        model = load_revision(self.model, rev.revision, dtype=DTYPES.get(self.dtype) if self.dtype else None,
                              device=self.device)
        try:
            return score_heads(model, self.protocol, batch_size=self.batch_size, progress=False, **self.options)
        finally:
            commit = getattr(model.config, "_commit_hash", None)
            del model
            if self.delete_after and not Path(self.model).is_dir():
                freed = delete_cached_revision(self.model, commit)
                logger.info("deleted %s@%s from the cache (%.1f MB)", self.model, rev.revision, freed / 1e6)

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
            _write_json(self.manifest_path, self.manifest)
            return False
        meta = {"model": self.model, "revision": rev.revision, "step": rev.step,
                "tokens": rev.tokens if rev.tokens is not None else pd.NA, "protocol": self.protocol}
        df = df.copy()
        for i, (k, v) in enumerate(meta.items()):
            df.insert(i, k, v)
        df["tokens"] = df["tokens"].astype("Int64")
        _write_parquet(self.out / "revisions" / f"{_safe_name(rev.revision)}.parquet", df)
        self._finished_parts()[rev.revision] = df
        self.manifest["revisions"][rev.revision] = {"status": "done", "step": rev.step, "tokens": rev.tokens,
                                                    "seconds": round(time.time() - t0, 3)}
        _write_json(self.manifest_path, self.manifest)
        _write_parquet(self.out / "results.parquet", self.results())
        return True

    def run(self, selected: Sequence[Revision]) -> pd.DataFrame:
        """Scan ``selected`` in training order, skipping finished revisions."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            _write_json(self.manifest_path, self.manifest)
        todo = [r for r in sorted(selected, key=lambda r: (r.step, r.revision)) if r.revision not in self.done()]
        for rev in tqdm(todo, desc=f"scan {Path(self.model).name}", unit="rev", disable=not self.progress):
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


def class_fractions(results: pd.DataFrame) -> pd.DataFrame:
    """Per revision (rows, in training order): the share of heads with each label (columns)."""
    if results.empty:
        return pd.DataFrame()
    frac = pd.crosstab([results["step"], results["revision"]], results["label"], normalize="index")
    return frac.sort_index()


def largest_jump(results: pd.DataFrame, label: Optional[str] = None) -> Optional[dict]:
    """The adjacent pair of scanned revisions with the largest change in a class fraction
    (``unclassified`` excluded, or only ``label``)."""
    frac = class_fractions(results)
    if len(frac) < 2:
        return None
    cols = [c for c in frac.columns if c != UNCLASSIFIED] if label is None else [label]
    cols = [c for c in cols if c in frac.columns]
    best = None
    revs = [r for _, r in frac.index]
    for c in cols:
        diff = frac[c].diff().abs().to_numpy()
        for i in range(1, len(diff)):
            if best is None or diff[i] > best["size"] + 1e-12:
                best = {"label": c, "size": float(diff[i]), "before": revs[i - 1], "after": revs[i],
                        "fraction_before": float(frac[c].iloc[i - 1]), "fraction_after": float(frac[c].iloc[i])}
    return best if best and best["size"] > 0 else None


def scan(model_or_dir: Union[str, Path], out: Union[str, Path], *, revisions_spec: str = "all",
         protocol: str = "xu2026", refine: bool = False, limit_tokens: Optional[int] = None, **kwargs) -> pd.DataFrame:
    """Scan the selected revisions (``all``, ``paper``, ``every:N``, ``log:K`` or names) and
    optionally refine the sharpest transition. Returns the results table."""
    s = Scan(model_or_dir, out, protocol, **kwargs)
    selected = select_revisions(s.catalog, revisions_spec, s.model)
    if limit_tokens is not None:
        selected = [r for r in selected if r.tokens is None or r.tokens <= limit_tokens]
        s.catalog = [r for r in s.catalog if r.tokens is None or r.tokens <= limit_tokens]
    s.run(selected)
    if refine:
        s.refine()
    return s.results()

