"""``evaluate()``: lm-eval tasks through lm-eval's own evaluator, with per-head statistics per document."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd
from filelock import FileLock, Timeout

from ..models import uses_circuit_stats
from ..models.positions import BinSpec, bin_edges
from ..names import PROFILE_KEY_STATISTICS
from ..profiling.profile import STATISTICS, record_options
from ..profiling.writer import atomic_write_parquet, atomic_write_text
from .requirement import require_lm_eval
from ..scans.sharding import Shard
from .shards import shard_samples, task_sizes
from .store import EvalDir


class EvaluationFailed(RuntimeError):
    """The evaluation stopped (a request failed); what finished stays committed."""


def check_settings(model, tasks: Sequence[str], statistics: Sequence[str], local_window: int,
                   limit: Optional[float], num_fewshot: Optional[int]) -> None:
    """``ValueError`` naming the bad argument, before any work."""
    if not uses_circuit_stats(model):
        raise ValueError("evaluate needs a model loaded with attn_implementation='circuit_stats'")
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    record_options(statistics, local_window)
    if set(statistics) & set(PROFILE_KEY_STATISTICS):
        raise ValueError(f"statistics: {list(PROFILE_KEY_STATISTICS)} are profile statistics (per bin of key "
                         "position), not recorded per evaluation request")
    if isinstance(local_window, bool) or not isinstance(local_window, int) or local_window < 1:
        raise ValueError(f"local_window must be an int >= 1, got {local_window!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ValueError(f"limit must be a number > 0 (a count, or a fraction below 1), got {limit!r}")
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0):
        raise ValueError(f"num_fewshot must be an int >= 0, got {num_fewshot!r}")


def evaluate(model, tasks: Sequence[str], *, tokenizer, out: Union[str, Path], include_path: Optional[str] = None,
             limit: Optional[float] = None, num_fewshot: Optional[int] = None, position_bins: BinSpec = "log2",
             statistics: Sequence[str] = STATISTICS, local_window: int = 16, plots: bool = True,
             model_name: Optional[str] = None, revision: Optional[str] = None, shard: Optional[Shard] = None,
             metadata: Optional[dict] = None) -> dict:
    """Run lm-eval ``tasks`` on ``model`` with ``simple_evaluate`` and record every request's statistics.

    Args:
        model: a causal LM loaded with ``attn_implementation="circuit_stats"``.
        tokenizer: its transformers tokenizer.
        out: output directory (resumable): ``results.json`` (lm-eval's results), ``samples.parquet``
            (one row per task, doc_id, filter: per-sample metrics, ``n_tokens``), ``statistics.parquet``
            (one row per task, doc_id, layer, head, position bin), ``summary.md``, ``plots/``.
        include_path: a folder of task YAMLs (lm-eval's ``TaskManager(include_path=...)``).
        limit, num_fewshot: as lm-eval's.
        position_bins, statistics, local_window: as ``profile``'s.
        metadata: passed to every task (lm-eval's ``--metadata``; RULER takes ``tokenizer`` and
            ``max_seq_lengths`` from it).
        shard: run only this shard's documents (``shards``) and commit their requests; the tables
            are written by one unsharded run afterwards, which reuses every committed request.

    Returns lm-eval's results dict (with ``samples``); for a shard, ``{"shard": "I/N", "documents":
    {task: [doc_id, ...]}}``. A failing request is recorded in
    ``failures.json`` and raised as ``EvaluationFailed``; finished requests stay committed for a re-run.
    """
    require_lm_eval()
    statistics = tuple(statistics)
    check_settings(model, tasks, statistics, local_window, limit, num_fewshot)
    edges = bin_edges(position_bins)
    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"include_path {include_path} is not a directory of task YAMLs")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict (lm-eval's task metadata), got {type(metadata).__name__}")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from .recording_lm import RecordingHFLM
    from .report import write_report
    from .tables import samples_table, statistics_table

    manager = TaskManager(include_path=str(include_path) if include_path else None, metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"tasks: unknown to lm-eval{' and ' + str(include_path) if include_path else ''}: {unknown}")
    settings = dict(model=model_name or getattr(model.config, "_name_or_path", ""), revision=revision,
                    tasks=list(tasks), include_path=str(Path(include_path).resolve()) if include_path else None,
                    limit=limit, num_fewshot=num_fewshot, statistics=list(statistics), local_window=local_window,
                    position_bins=[e if e != float("inf") else "inf" for e in edges],
                    dtype=str(next(model.parameters()).dtype).replace("torch.", ""))
    if metadata:  # (only then: directories written without it keep resuming)
        settings["metadata"] = metadata
    sharded = shard is not None and shard.count > 1
    samples = shard_samples(task_sizes(tasks, manager, limit), shard) if sharded else None
    store = EvalDir(out, shard)
    lock = FileLock(str(store.lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"another evaluation is writing {out} (lock {store.lock_path})") from None
    try:
        store.start(settings)
        store.clear_failures()
        t0 = time.time()
        lm = RecordingHFLM(model, tokenizer, store, edges=edges, statistics=statistics, local_window=local_window)
        try:
            results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager,
                                      limit=None if sharded else limit, samples=samples,
                                      num_fewshot=num_fewshot, log_samples=True)
        except Exception as err:
            raise EvaluationFailed(f"{type(err).__name__}: {err} (recorded in {store.failures_path} when a "
                                   "request failed; finished requests are kept: rerun to resume)") from err
        if sharded:  # (lm-eval returns None on a torchrun LOCAL_RANK > 0: the requests are committed all the same)
            return {"shard": str(shard), "documents": samples}
        store.finish(elapsed=time.time() - t0)
        requests = pd.DataFrame(lm.answered).drop_duplicates(["task", "doc_id", "request"])  # repeats: one each
        stats = statistics_table(store.request_rows(requests), statistics)
        samples = samples_table(results["samples"], requests)
        aggregated = {k: v for k, v in results.items() if k != "samples"}
        atomic_write_text(store.root / "results.json",
                          json.dumps(aggregated, indent=2, default=handle_non_serializable, ensure_ascii=False))
        atomic_write_parquet(store.root / "samples.parquet", samples)
        atomic_write_parquet(store.root / "statistics.parquet", stats)
        write_report(store.root, aggregated, samples, stats, statistics, plots=plots)
        return results
    finally:
        lock.release()
