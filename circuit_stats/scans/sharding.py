"""Splitting a scan over processes: ``--shard I/N``, torchrun and SLURM job arrays.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; a SLURM job array sets
``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT`` (and ``SLURM_ARRAY_TASK_MIN``). Both together
(torchrun inside every array task) give ``array tasks x world size`` shards.
"""

from __future__ import annotations

import os
from typing import Mapping, NamedTuple, Optional, Sequence, TypeVar

T = TypeVar("T")


class Shard(NamedTuple):
    """Shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def take(self, items: Sequence[T]) -> list[T]:
        """Every ``count``-th item from ``index`` (round robin keeps shards balanced in time)."""
        return list(items[self.index :: self.count])

    @property
    def file_tag(self) -> str:
        """``.shard-I-of-N`` for a shard's own files in a shared directory; empty for ``0/1``."""
        return f".shard-{self.index}-of-{self.count}" if self.count > 1 else ""

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str) -> Shard:
    """``"I/N"`` with ``0 <= I < N``."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects I/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: expected 0 <= I < N")
    return Shard(i, n)


def resolve_shard(spec: Optional[str], env: Optional[Mapping[str, str]] = None) -> Shard:
    """``--shard I/N`` when given, else the torchrun / SLURM array shard (``shard_from_env``)."""
    return parse_shard(spec) if spec else shard_from_env(env)


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def shard_from_env(env: Optional[Mapping[str, str]] = None) -> Shard:
    """The shard a torchrun rank and/or SLURM array task owns; ``0/1`` outside both."""
    env = os.environ if env is None else env
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    task, tasks = _env_int(env, "SLURM_ARRAY_TASK_ID"), _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    rank, world = (rank, world) if rank is not None and world is not None else (0, 1)
    if task is not None and tasks is not None:
        task -= _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        if not 0 <= task < tasks:
            raise ValueError("SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN must lie in [0, SLURM_ARRAY_TASK_COUNT): "
                             "use a dense array such as --array=0-7")
    else:
        task, tasks = 0, 1
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
    return Shard(task * world + rank, tasks * world)


def local_device(device: Optional[str], env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Under torchrun, ``cuda`` (or no device on a GPU machine) becomes ``cuda:LOCAL_RANK``."""
    env = os.environ if env is None else env
    local_rank = _env_int(env, "LOCAL_RANK")
    if local_rank is None:
        return device
    import torch

    if device == "cuda" or (device is None and torch.cuda.is_available()):
        return f"cuda:{local_rank}"
    return device
