"""Scans over training checkpoints: score every head at every selected revision.

Three parts: :class:`~.directory.ScanDirectory` (the output directory's layout, locks and state,
safe against kills and concurrent writers), :class:`~.scorer.CheckpointScorer` (fetch, score and
free one revision) and :class:`Scan` here (which revisions to scan, in what order, with prefetch,
duplicates of identical weights, the consecutive-failure rule and refinement). Re-running the same
scan skips finished revisions and retries failed ones. A revision whose scores are NaN or infinite
(NaN weights) fails like one that does not load: its table is never committed.
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
from tqdm.auto import tqdm

from ..finite import check_finite, float_columns
from ..protocols import get_protocol
from .catalog import Revision, revisions, select_revisions
from .directory import INTEGRITY_COLUMNS, META_COLUMNS, TABLE, ScanDirectory
from .emergence import largest_jump
from .files import read_json, write_json
from .integrity import duplicate_groups, weights_digest
from .prefetch import prefetched
from .scorer import CheckpointScorer
from .settings import SettingsError, check_settings, comparable, normalised_model
from ..sharding import Shard, local_device, shard_from_env

__all__ = ["INTEGRITY_COLUMNS", "META_COLUMNS", "TABLE", "Scan", "ScanOutcome", "scan"]

logger = logging.getLogger(__name__)
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
    """The scan loop over one output directory and the catalog it draws revisions from.

    All settings are checked when the object is made (:class:`SettingsError`, nothing written).
    ``fetch_fn(rev)`` brings a revision to disk (hub: a download; may run in a background thread
    with ``prefetch``), ``score_fn(rev, fetched)`` scores it, ``release_fn(fetched)`` frees it
    (``delete_after``), ``digest_fn(rev)`` identifies its weights (``integrity``); by default a
    :class:`CheckpointScorer` does the first three.
    """

    def __init__(self, model_or_dir: Union[str, Path], out: Union[str, Path], protocol: str, *,
                 catalog: Optional[Sequence[Revision]] = None, score_fn: Optional[ScoreFn] = None,
                 fetch_fn: Optional[FetchFn] = None, release_fn: Optional[Callable[[Any], None]] = None,
                 digest_fn: Optional[DigestFn] = None, protocol_options: Optional[dict] = None,
                 dtype: Optional[str] = None, device: Optional[str] = None, batch_size: Optional[int] = None,
                 delete_after: bool = False, tokens_per_step: Optional[int] = None, progress: bool = True,
                 prefetch: int = 0, max_consecutive_failures: int = 3, shard: Optional[Shard] = None,
                 check_weights: bool = True, tokenizer: Optional[str] = None):
        options = dict(protocol_options or {})
        device = local_device(device)
        resolved = check_settings(protocol, options, dtype=dtype, device=device, batch_size=batch_size,
                                  prefetch=prefetch, max_consecutive_failures=max_consecutive_failures,
                                  tokenizer=tokenizer)
        self.model_id = normalised_model(model_or_dir)  # hub model id or absolute checkpoint directory
        self.protocol = protocol
        self.nan_scores = get_protocol(protocol).nan_scores
        self.settings = comparable({"model": self.model_id, "protocol": protocol, "options": resolved, "dtype": dtype,
                                    "tokenizer": tokenizer})
        self.dir = ScanDirectory(Path(out), self.settings)
        self.dir.check()
        self.scorer = CheckpointScorer(self.model_id, Path(model_or_dir).is_dir(), protocol, options, dtype, device,
                                       batch_size, tokenizer, delete_after)
        self.progress, self.prefetch = progress, prefetch
        self.max_consecutive_failures = max_consecutive_failures
        self.shard = shard if shard is not None else shard_from_env()
        self.check_weights = check_weights
        self.catalog = list(catalog) if catalog is not None else revisions(model_or_dir, tokens_per_step=tokens_per_step)
        self.fetch_fn = fetch_fn or self.scorer.fetch
        self.score_fn = score_fn or self.scorer.score
        self.release_fn = release_fn or self.scorer.release
        self.digest_fn = digest_fn or (lambda rev: weights_digest(self.model_id, rev.revision))

    @property
    def out(self) -> Path:
        return self.dir.out

    def done(self) -> set[str]:
        return self.dir.done(self.catalog)

    def failed(self) -> dict[str, str]:
        return self.dir.failed()

    def results(self, include_duplicates: bool = True) -> pd.DataFrame:
        """Every finished revision, one row per (revision, layer, head), in training order."""
        return self.dir.results(include_duplicates)

    def write_status(self) -> dict:
        return self.dir.write_status()

    # -- weights integrity
    def digests(self, revs: Sequence[Revision]) -> dict[str, Optional[str]]:
        """Weights digests of ``revs`` (None where unknown), cached in ``weights.json`` so that
        shards and re-runs ask the hub once."""
        if not self.check_weights:
            return {}
        path = self.out / "weights.json"
        with self.dir.lock("weights"):
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
    def _commit(self, rev: Revision, df: pd.DataFrame, digest: Optional[str], duplicate_of: Optional[str] = None,
                seconds: Optional[float] = None) -> pd.DataFrame:
        meta = {"model": self.model_id, "protocol": self.protocol}
        return self.dir.commit(rev, df, meta, digest, duplicate_of=duplicate_of, seconds=seconds)

    def _write_duplicates(self, canonical: Revision, dups: Sequence[Revision], outcome: ScanOutcome) -> None:
        if not dups or not self.dir.part_path(canonical.revision).exists():
            return
        source = pd.read_parquet(self.dir.part_path(canonical.revision))
        digest = source["weights_sha256"].iloc[0] if len(source) else None
        for dup in dups:
            if not self.dir.part_path(dup.revision).exists():
                self._commit(dup, source, None if pd.isna(digest) else digest, duplicate_of=canonical.revision)
                outcome.duplicates[dup.revision] = canonical.revision

    def scan_one(self, rev: Revision) -> bool:
        """Fetch, score and commit one revision (a failure is recorded); False if it failed or
        another process holds it."""
        outcome = ScanOutcome(results=pd.DataFrame(), shard=self.shard)
        self.dir.open()
        if not self.dir.claim(rev.revision):
            return self.dir.part_path(rev.revision).exists()
        try:
            ready = next(prefetched([rev], self.fetch_fn, 0))
            self._process(ready.item, ready.fetched, ready.error, self.digests([rev]).get(rev.revision), outcome)
        finally:
            self.dir.unclaim(rev.revision)
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
            self.dir.record_failure(rev, f"{type(err).__name__}: {err}")
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
        self.dir.open()
        self.dir.drop_stale_failures()
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
                if self.dir.claim(rev.revision):
                    yield rev
                elif self.dir.part_path(rev.revision).exists():
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
                                self.dir.record_failure(dup, f"duplicate of {rev.revision}, which failed: {err}")
                    finally:
                        self.dir.unclaim(rev.revision)
                    bar.update()
                    last, repeats = (err, repeats + 1) if err is not None and err == last else (err, int(err is not None))
                    if repeats >= self.max_consecutive_failures:
                        outcome.stopped = (f"stopped after {repeats} consecutive revisions failed with the same error: "
                                           f"{err}")
                        logger.error(outcome.stopped)
                        break
        finally:
            bar.close()
            self.dir.unclaim_all()
            self.write_status()
        outcome.results = self.results()
        return outcome

    # -- refinement
    def refine(self, max_scans: int = 32, label: Optional[str] = None) -> list[str]:
        """Bisect the largest jump in a class fraction between adjacent scanned revisions until it
        lies between adjacent catalog revisions. A candidate whose weights equal a scanned
        revision's is written as its duplicate, never scanned, and the jump is never placed
        between identical weights (duplicates are left out of jumps). Returns the revisions scanned."""
        self.dir.open()
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
