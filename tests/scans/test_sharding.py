"""Sharding: --shard I/N, torchrun and SLURM array environments, and a real torchrun run."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from scan_fakes import CATALOG, fake_scan, fake_scores

from circuit_stats.demo.series import demo_series_dir
from circuit_stats.sharding import Shard, local_device, parse_shard, shard_from_env


def test_parse_shard():
    assert parse_shard("1/4") == Shard(1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_shard_from_torchrun_and_slurm_environments():
    assert shard_from_env({}) == Shard(0, 1)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}) == Shard(3, 8)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "6", "SLURM_ARRAY_TASK_MIN": "1"}) \
        == Shard(4, 6)
    # torchrun inside each array task: task-major, rank-minor
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "RANK": "1",
                           "WORLD_SIZE": "8"}) == Shard(17, 32)
    with pytest.raises(ValueError, match="dense array"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3"})


def test_local_rank_picks_the_gpu():
    assert local_device("cpu", {"LOCAL_RANK": "3"}) == "cpu"
    assert local_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert local_device("cuda", {}) == "cuda"
    assert local_device(None, {"LOCAL_RANK": "1"}) == ("cuda:1" if torch.cuda.is_available() else None)


def test_shards_split_the_revisions_and_keep_duplicates_with_their_weights(tmp_path):
    score, calls = fake_scores(50)

    def digest(rev):  # step10 and step30 hold step90's weights
        return "sha-step90" if rev.step in (10, 30, 90) else f"sha-{rev.revision}"

    selected = CATALOG[::10]
    outcomes = [fake_scan(tmp_path, score, digest_fn=digest, shard=Shard(i, 3)).run(selected) for i in range(3)]
    assert sorted(calls) == sorted(r.revision for r in selected if r.step not in (10, 30))
    assert [len(o.scanned) for o in outcomes] == [3, 3, 2]
    assert sum(len(o.duplicates) for o in outcomes) == 2
    table = pd.read_parquet(tmp_path / "results.parquet")
    assert table.groupby("revision").size().eq(8).all() and table.revision.nunique() == 10


@pytest.mark.hf  # loads the demo checkpoints with transformers
def test_torchrun_two_processes_fill_one_directory(tmp_path):
    revisions = ["checkpoint-0", "checkpoint-50", "checkpoint-100", "checkpoint-200", "checkpoint-300", "checkpoint-400"]
    out = tmp_path / "scan"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "circuit_stats.cli", "scan", str(demo_series_dir()), "--revisions", ",".join(revisions),
           "--out", str(out), "--protocol", "repeat", "--option", "seq_len=8", "--option", "n_sequences=2",
           "--option", "vocab_range=[32, 127]"]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "scanned 3 revisions (shard 0/2)" in run.stdout and "scanned 3 revisions (shard 1/2)" in run.stdout
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table.revision.unique()) == sorted(revisions)
    assert table.groupby("revision").size().eq(8).all(), "every revision once"
