"""Splitting an evaluation over processes (``--shard I/N``, torchrun, SLURM arrays; see
``circuit_stats.sharding``): shard I runs documents ``I, I+N, I+2N, ...`` of every task through lm-eval's
``samples=`` selection and commits their requests; one unsharded run afterwards merges (every
request is answered from the committed parts, so the model never runs again for them)."""

from __future__ import annotations

from typing import Optional, Sequence

from ..sharding import Shard


def task_sizes(tasks: Sequence[str], manager, limit: Optional[float]) -> dict[str, int]:
    """Documents evaluated per (sub)task: its evaluation split, cut by ``limit`` as lm-eval cuts it."""
    from lm_eval.evaluator_utils import get_sample_size
    from lm_eval.tasks import get_task_dict

    sizes: dict[str, int] = {}

    def walk(task_dict: dict) -> None:
        for value in task_dict.values():
            if isinstance(value, dict):
                walk(value)
            else:
                n = len(value.eval_docs)
                cut = get_sample_size(value, limit)
                sizes[value.config.task] = n if cut is None else min(n, cut)

    walk(get_task_dict(list(tasks), manager))
    return sizes


def shard_samples(sizes: dict[str, int], shard: Shard) -> dict[str, list[int]]:
    """lm-eval's ``samples=``: the doc ids of each task that ``shard`` owns (round robin)."""
    return {task: shard.take(range(n)) for task, n in sizes.items()}
