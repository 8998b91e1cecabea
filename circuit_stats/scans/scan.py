"""Scans over training checkpoints: score every head at every selected revision.

Layout of an output directory ``DIR``::

    DIR/settings.json                    model, protocol, resolved options, dtype (fixed by the first run)
    DIR/results.parquet/<rev>.parquet    one part per finished revision: the table, a parquet
                                         dataset (``pd.read_parquet(DIR / "results.parquet")``)
    DIR/failed/<rev>.json                one file per failed revision (error, step, tokens)
    DIR/weights.json                     weights digest per revision (integrity checks)
    DIR/status.json                      done / duplicates / failed, rebuilt at the end of every run
    DIR/.locks/                          filelock files (one per revision being scanned)

Every file is written atomically (``files.atomic_write``) and a finished revision is exactly one
file, so a run killed at any moment loses at most the revisions in flight, and the table read at
any moment holds every finished revision once. Processes scanning into one directory (shards, or
the same revisions twice) claim a revision with a non-blocking file lock before fetching it.
Re-running the same scan skips finished revisions and retries failed ones. A revision whose
scores are NaN or infinite (NaN weights) fails like one that does not load: its table is never
committed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import pandas as pd
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from ..finite import check_finite, float_columns
from ..protocols import get_protocol
from ..protocols.texts import BYTES
from ..scoring import score_heads
from ..tokenizers import load_tokenizer
from .catalog import Revision, revisions, select_revisions
from .emergence import largest_jump
from .files import parquet_parts, read_json, safe_name, write_json, write_parquet
from .integrity import duplicate_groups, hub_weight_hashes, weights_digest
from .loading import DTYPES, Fetched, delete_cached_revision, fetch_revision, load_checkpoint
from .prefetch import prefetched
from .settings import SettingsError, check_settings, comparable, differences, normalised_model
from .sharding import Shard, local_device, shard_from_env

logger = logging.getLogger(__name__)
# Files that make a checkpoint folder carry its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
META_COLUMNS = ["model", "revision", "step", "tokens", "protocol"]
INTEGRITY_COLUMNS = ["weights_sha256", "duplicate_of"]
TABLE = "results.parquet"
DIGEST_WORKERS = 8

FetchFn = Callable[[Revision], Any]
ScoreFn = Callable[[Revision, Any], pd.DataFrame]  # (revision, what FetchFn returned)
DigestFn = Callable[[Revision], str]


@dataclass
class ScanOutcome:
    """What one run did. ``scanned``: revisions scored in this run; ``duplicates``: revisions
    written as copies of identical weights (``{revision: duplicate_of}``); ``failed``: this run's
    failures (``{revision: error}``); ``stopped``: why the run stopped early, if it did."""

    results: pd.DataFrame
    shard: Shard = Shard()
    scanned: list[str] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)
    already_done: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped: Optional[str] = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None


def error_text(err: BaseException, revision: str) -> str:
    """``Type: message`` with the revision name replaced, so that one cause reads the same for
    every revision (for the consecutive-failure rule)."""
    return f"{type(err).__name__}: {err}".replace(revision, "<revision>")


class Scan:
    """One scan output directory and the catalog it draws revisions from.

    All settings are checked when the object is made (:class:`SettingsError`, nothing written).
    ``fetch_fn(rev)`` brings a revision to disk (hub: a download; may run in a background thread
    with ``prefetch``), ``score_fn(rev, fetched)`` scores it, ``release_fn(fetched)`` frees it
    (``delete_after``), ``digest_fn(rev)`` identifies its weights (``integrity``).
    """

    def __init__(self, model_or_dir: Union[str, Path], out: Union[str, Path], protocol: str, *,
                 catalog: Optional[Sequence[Revision]] = None, score_fn: Optional[ScoreFn] = None,
                 fetch_fn: Optional[FetchFn] = None, release_fn: Optional[Callable[[Any], None]] = None,
                 digest_fn: Optional[DigestFn] = None, protocol_options: Optional[dict] = None,
                 dtype: Optional[str] = None, device: Optional[str] = None, batch_size: Optional[int] = None,
                 delete_after: bool = False, tokens_per_step: Optional[int] = None, progress: bool = True,
                 prefetch: int = 0, max_consecutive_failures: int = 3, shard: Optional[Shard] = None,
                 check_weights: bool = True, tokenizer: Optional[str] = None):
        self.options = dict(protocol_options or {})
        device = local_device(device)
        resolved = check_settings(protocol, self.options, dtype=dtype, device=device, batch_size=batch_size,
                                  prefetch=prefetch, max_consecutive_failures=max_consecutive_failures,
                                  tokenizer=tokenizer)
        self.takes_texts = get_protocol(protocol).takes_texts
        self.nan_scores = get_protocol(protocol).nan_scores
        self.tokenizer = tokenizer
        self._named_tokenizer = None  # --tokenizer NAME: loaded once, the same for every revision
        self.model_id = normalised_model(model_or_dir)  # hub model id or absolute checkpoint directory
        self.is_local = Path(model_or_dir).is_dir()
        self.out = Path(out)
        self.protocol = protocol
        self.dtype, self.device, self.batch_size = dtype, device, batch_size
        self.delete_after, self.progress, self.prefetch = delete_after, progress, prefetch
        self.max_consecutive_failures = max_consecutive_failures
        self.shard = shard if shard is not None else shard_from_env()
        self.check_weights = check_weights
        self.settings = comparable({"model": self.model_id, "protocol": protocol, "options": resolved, "dtype": dtype,
                                    "tokenizer": tokenizer})
        self._check_out_dir()
        self.catalog = list(catalog) if catalog is not None else revisions(model_or_dir, tokens_per_step=tokens_per_step)
        self.fetch_fn = fetch_fn or self._fetch
        self.score_fn = score_fn or self._load_and_score
        self.release_fn = release_fn or self._release
        self.digest_fn = digest_fn or (lambda rev: weights_digest(self.model_id, rev.revision))
        self._weight_files: dict[str, list[str]] = {}
        self._parts: dict[Path, tuple[int, pd.DataFrame]] = {}
        self._held: dict[str, FileLock] = {}

    # -- directory layout
    @property
    def table_dir(self) -> Path:
        return self.out / TABLE

    def part_path(self, revision: str) -> Path:
        return self.table_dir / f"{safe_name(revision)}.parquet"

    def failed_path(self, revision: str) -> Path:
        return self.out / "failed" / f"{safe_name(revision)}.json"

    def _lock(self, name: str) -> FileLock:
        (self.out / ".locks").mkdir(parents=True, exist_ok=True)
        return FileLock(self.out / ".locks" / f"{name}.lock")

    def _check_out_dir(self) -> None:
        """Refuse a directory holding another scan (or an older layout), before writing anything."""
        if (self.out / "manifest.json").exists() or (self.out / TABLE).is_file():
            raise SettingsError(f"--out {self.out} holds a scan written by an older circuit-stats (manifest.json); "
                                "use another --out")
        stored = read_json(self.out / "settings.json")
        if stored is not None and stored != self.settings:
            diff = "; ".join(differences(stored, self.settings))
            raise SettingsError(f"--out {self.out} holds a scan with other settings ({diff}); use another --out "
                                "or delete it")

    def _open(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with self._lock("settings"):
            self._check_out_dir()  # another process may have started the directory meanwhile
            if not (self.out / "settings.json").exists():
                write_json(self.out / "settings.json", self.settings)

    # -- state, read from the files (other processes write here too)
    def done(self) -> set[str]:
        present = {p.stem for p in parquet_parts(self.table_dir)}
        return {r.revision for r in self.catalog if safe_name(r.revision) in present}

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

    # -- weights integrity
    def digests(self, revs: Sequence[Revision]) -> dict[str, Optional[str]]:
        """Weights digests of ``revs`` (None where unknown), cached in ``weights.json`` so that
        shards and re-runs ask the hub once."""
        if not self.check_weights:
            return {}
        path = self.out / "weights.json"
        with self._lock("weights"):
            cache = read_json(path) or {}
            missing = [r for r in revs if r.revision not in cache]

            errors: dict[str, str] = {}

            def one(rev: Revision) -> Optional[str]:
                try:
                    return self.digest_fn(rev)
                except Exception as err:  # unknown weights match nothing; loading will tell more
                    errors[rev.revision] = f"{type(err).__name__}: {err}"
                    return None

            if missing:
                with ThreadPoolExecutor(DIGEST_WORKERS) as pool:
                    found = dict(zip([r.revision for r in missing], pool.map(one, missing)))
                cache.update({k: v for k, v in found.items() if v is not None})
                write_json(path, cache)
            if errors:
                first = next(iter(errors))
                logger.warning("cannot identify the weights of %d revision(s) (%s: %s); they are compared with none",
                               len(errors), first, errors[first])
        return {r.revision: cache.get(r.revision) for r in revs}

    # -- one revision
    def _fetch(self, rev: Revision) -> Fetched:
        files = None
        if not self.is_local:  # download the weight files the integrity check identified, not every format
            try:
                files = sorted(hub_weight_hashes(self.model_id, rev.revision))
            except Exception as err:  # the download below reports what is wrong
                logger.info("no file list for %s (%s); downloading every weight format", rev.revision, err)
        return fetch_revision(self.model_id, rev.revision, files)

    def _load_and_score(self, rev: Revision, fetched: Fetched) -> pd.DataFrame:
        model = load_checkpoint(fetched.path, dtype=DTYPES.get(self.dtype) if self.dtype else None, device=self.device)
        try:
            extra = {"tokenizer": self._tokenizer_for(fetched.path, rev.revision)} if self.takes_texts else {}
            return score_heads(model, self.protocol, batch_size=self.batch_size, progress=False, **extra, **self.options)
        finally:
            del model

    def _tokenizer_for(self, checkpoint: Path, revision: str):
        """``--tokenizer``: "bytes", a tokenizer name or path, or (default) the model's own: the
        checkpoint folder's tokenizer files, or the hub repository's at this revision."""
        if self.tokenizer == BYTES:
            return BYTES
        if self.tokenizer and self._named_tokenizer is not None:
            return self._named_tokenizer
        if self.tokenizer:
            source, revision = self.tokenizer, None
        elif self.is_local:
            source, revision = checkpoint, None
            if not any((Path(checkpoint) / f).exists() for f in TOKENIZER_FILES):
                raise ValueError(f"protocol {self.protocol!r} scores text and {checkpoint} holds no tokenizer files; "
                                 "pass --tokenizer NAME, or --tokenizer bytes for a byte-level model")
        else:
            source, revision = self.model_id, revision
        tokenizer = load_tokenizer(source, revision=revision, what=f"protocol {self.protocol!r} scores text")
        if self.tokenizer:
            self._named_tokenizer = tokenizer
        return tokenizer

    def _release(self, fetched: Any) -> None:
        if self.delete_after and not self.is_local and isinstance(fetched, Fetched):
            freed = delete_cached_revision(self.model_id, fetched.commit)
            logger.info("deleted %s@%s from the cache (%.1f MB)", self.model_id, fetched.commit, freed / 1e6)

    def _claim(self, revision: str) -> bool:
        """Take the revision's lock without waiting; False if another process holds it or it is done."""
        lock = self._lock(safe_name(revision))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        if self.part_path(revision).exists():  # finished by another process meanwhile
            lock.release()
            return False
        self._held[revision] = lock
        return True

    def _unclaim(self, revision: str) -> None:
        lock = self._held.pop(revision, None)
        if lock is not None:
            lock.release()

    def _commit(self, rev: Revision, df: pd.DataFrame, digest: Optional[str], duplicate_of: Optional[str] = None,
                seconds: Optional[float] = None) -> pd.DataFrame:
        meta = {"model": self.model_id, "revision": rev.revision, "step": rev.step,
                "tokens": rev.tokens if rev.tokens is not None else pd.NA, "protocol": self.protocol}
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

    def _record_failure(self, rev: Revision, error: str) -> None:
        write_json(self.failed_path(rev.revision), {"revision": rev.revision, "step": rev.step, "tokens": rev.tokens,
                                                    "error": error, "time": time.time()})

    def _write_duplicates(self, canonical: Revision, dups: Sequence[Revision], outcome: ScanOutcome) -> None:
        if not dups or not self.part_path(canonical.revision).exists():
            return
        source = pd.read_parquet(self.part_path(canonical.revision))
        digest = source["weights_sha256"].iloc[0] if len(source) else None
        for dup in dups:
            if not self.part_path(dup.revision).exists():
                self._commit(dup, source, None if pd.isna(digest) else digest, duplicate_of=canonical.revision)
                outcome.duplicates[dup.revision] = canonical.revision

    def scan_one(self, rev: Revision) -> bool:
        """Fetch, score and commit one revision (a failure is recorded); False if it failed or
        another process holds it."""
        outcome = ScanOutcome(results=pd.DataFrame(), shard=self.shard)
        self._open()
        if not self._claim(rev.revision):
            return self.part_path(rev.revision).exists()
        try:
            ready = next(prefetched([rev], self.fetch_fn, 0))
            self._process(ready.item, ready.fetched, ready.error, self.digests([rev]).get(rev.revision), outcome)
        finally:
            self._unclaim(rev.revision)
        return not outcome.failed

    def _process(self, rev: Revision, fetched: Any, error: Optional[BaseException], digest: Optional[str],
                 outcome: ScanOutcome) -> Optional[str]:
        """Score one fetched revision and commit it; returns the error text if it failed."""
        t0 = time.time()
        try:
            if error is not None:
                raise error
            df = self.score_fn(rev, fetched)
            check_finite(df, float_columns(df, exclude=self.nan_scores), "scores")  # any score_fn
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a revision that fails to load or score
            text = error_text(err, rev.revision)
            logger.warning("revision %s failed: %s", rev.revision, text)
            self._record_failure(rev, f"{type(err).__name__}: {err}")
            outcome.failed[rev.revision] = f"{type(err).__name__}: {err}"
            return text
        finally:
            if fetched is not None:
                self.release_fn(fetched)
        self._commit(rev, df, digest, seconds=round(time.time() - t0, 3))
        outcome.scanned.append(rev.revision)
        return None

    # -- the scan
    def run(self, selected: Sequence[Revision]) -> ScanOutcome:
        """Scan this shard's part of ``selected`` in training order, skipping finished revisions;
        revisions with the weights of another selected revision are written as its duplicates."""
        self._open()
        self.drop_stale_failures()
        order = sorted(selected, key=lambda r: (r.step, r.revision))
        digests = self.digests(order)
        dup_of = duplicate_groups(digests, [r.revision for r in order])
        by_name = {r.revision: r for r in order}
        members: dict[str, list[Revision]] = {}
        for rev, canonical in dup_of.items():
            members.setdefault(canonical, []).append(by_name[rev])
        mine = self.shard.take([r for r in order if r.revision not in dup_of])
        outcome = ScanOutcome(results=pd.DataFrame(), shard=self.shard)
        done = self.done()
        outcome.already_done = [r.revision for r in mine if r.revision in done]
        for rev in mine:
            if rev.revision in done:
                self._write_duplicates(rev, members.get(rev.revision, []), outcome)
        todo = [r for r in mine if r.revision not in done]

        def claimed() -> Iterator[Revision]:
            for rev in todo:
                if self._claim(rev.revision):
                    yield rev
                elif self.part_path(rev.revision).exists():
                    outcome.already_done.append(rev.revision)
                else:
                    outcome.busy.append(rev.revision)

        last, repeats = None, 0
        bar = tqdm(total=len(todo), desc=f"scan {Path(self.model_id).name}" + (f" [shard {self.shard}]" if self.shard.count > 1 else ""), unit="rev",
                   disable=not self.progress)
        try:
            with contextlib.closing(prefetched(claimed(), self.fetch_fn, self.prefetch, self.release_fn)) as ready_revs:
                for ready in ready_revs:
                    rev = ready.item
                    try:
                        err = self._process(rev, ready.fetched, ready.error, digests.get(rev.revision), outcome)
                        if err is None:
                            self._write_duplicates(rev, members.get(rev.revision, []), outcome)
                        else:
                            for dup in members.get(rev.revision, []):
                                self._record_failure(dup, f"duplicate of {rev.revision}, which failed: {err}")
                    finally:
                        self._unclaim(rev.revision)
                    bar.update()
                    last, repeats = (err, repeats + 1) if err is not None and err == last else (err, int(err is not None))
                    if repeats >= self.max_consecutive_failures:
                        outcome.stopped = (f"stopped after {repeats} consecutive revisions failed with the same error: "
                                           f"{err}")
                        logger.error(outcome.stopped)
                        break
        finally:
            bar.close()
            for revision in list(self._held):
                self._unclaim(revision)
            self.write_status()
        outcome.results = self.results()
        return outcome

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

    # -- refinement
    def refine(self, max_scans: int = 32, label: Optional[str] = None) -> list[str]:
        """Bisect the largest jump in a class fraction between adjacent scanned revisions until it
        lies between adjacent catalog revisions. A candidate whose weights equal a scanned
        revision's is written as its duplicate, never scanned, and the jump is never placed
        between identical weights (duplicates are left out of jumps). Returns the revisions scanned."""
        self._open()
        scanned: list[str] = []
        ordered = sorted(self.catalog, key=lambda r: (r.step, r.revision))
        order = {r.revision: i for i, r in enumerate(ordered)}
        skip = set(self.failed())
        outcome = ScanOutcome(results=pd.DataFrame(), shard=self.shard)
        while len(scanned) < max_scans:
            results = self.results()
            jump = largest_jump(results[results["duplicate_of"].isna()] if len(results) else results, label=label)
            if jump is None:
                break
            lo, hi = order.get(jump["before"]), order.get(jump["after"])
            if lo is None or hi is None:
                break
            known = set(results["revision"]) if len(results) else set()
            between = [r for r in ordered[lo + 1 : hi] if r.revision not in skip and r.revision not in known]
            if not between:
                break  # the jump lies between adjacent available checkpoints
            mid = between[len(between) // 2]
            digest = self.digests([mid]).get(mid.revision)
            scanned_weights = (results[results["duplicate_of"].isna()].drop_duplicates("revision")
                               .set_index("weights_sha256")["revision"] if len(results) else pd.Series(dtype=str))
            if digest is not None and digest in scanned_weights.index:
                same = [r for r in ordered if r.revision == scanned_weights.loc[digest]][0]
                self._write_duplicates(same, [mid], outcome)
                continue
            if not self.scan_one(mid):
                skip.add(mid.revision)
            else:
                scanned.append(mid.revision)
            label = jump["label"]  # keep following the same class
        self.write_status()
        return scanned


def scan(model_or_dir: Union[str, Path], out: Union[str, Path], *, revisions_spec: str = "all",
         protocol: str = "xu2026", refine: bool = False, limit_tokens: Optional[int] = None,
         **kwargs) -> ScanOutcome:
    """Scan the selected revisions (``all``, ``paper``, ``every:N``, ``log:K`` or names) and
    optionally refine the sharpest transition. Every setting is checked before anything is
    fetched or written (:class:`SettingsError`)."""
    s = Scan(model_or_dir, out, protocol, **kwargs)
    try:
        selected = select_revisions(s.catalog, revisions_spec, s.model_id)
    except ValueError as err:
        raise SettingsError(f"--revisions: {err}") from None
    if limit_tokens is not None:
        selected = [r for r in selected if r.tokens is None or r.tokens <= limit_tokens]
        s.catalog = [r for r in s.catalog if r.tokens is None or r.tokens <= limit_tokens]
        if not selected:
            raise SettingsError(f"--limit-tokens {limit_tokens:g} leaves no revision of --revisions {revisions_spec!r}")
    if refine and s.shard.count > 1:
        raise SettingsError(f"--refine needs every revision's results: run it in one process after the {s.shard.count} "
                            "shards finish")
    outcome = s.run(selected)
    if refine and outcome.stopped is None:
        outcome.scanned += s.refine()
        outcome.results = s.results()
    return outcome
