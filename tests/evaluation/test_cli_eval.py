"""circuit-stats eval: settings checked before anything loads (exit 2, nothing written), the
install hint without lm-eval, and a run on the bundled model writing its tables."""

import pandas as pd
import pytest
from eval_fixtures import byte_checkpoint, task_dir  # noqa: F401 (fixtures)

from circuit_stats.cli import main


def test_missing_lm_eval_says_how_to_install(tmp_path, monkeypatch, capsys):
    import circuit_stats.evaluation.requirement as requirement

    real = requirement.importlib.util.find_spec
    monkeypatch.setattr(requirement.importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    out = tmp_path / "out"
    assert main(["eval", "some/model", "--tasks", "copy_mc", "--out", str(out)]) == 2
    assert "pip install 'circuit-stats[eval]'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv, flag", [
    (["--tasks", "copy_mc", "--include-path", "/nonexistent/tasks"], "--include-path"),
    (["--tasks", " , "], "--tasks"),
    (["--tasks", "copy_mc", "--limit", "0"], "--limit"),
    (["--tasks", "copy_mc", "--bins", "4,2"], "--bins"),
    (["--tasks", "copy_mc", "--statistics", "sink,bogus"], "--statistics"),
    (["--tasks", "copy_mc", "--metadata", "[4096]"], "--metadata"),
    (["--tasks", "copy_mc", "--metadata", "{max_seq_lengths: 1}"], "--metadata"),
])
def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys, argv, flag):
    pytest.importorskip("lm_eval")
    out = tmp_path / "out"
    assert main(["eval", "some/model", *argv, "--out", str(out)]) == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def test_eval_on_the_bundled_model(byte_checkpoint, task_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", str(byte_checkpoint), "--tasks", "copy_mc", "--include-path", str(task_dir),
                 "--limit", "3", "--statistics", "sink,induction", "--out", str(out), "--no-plots"]) == 0
    assert "evaluated 3 documents" in capsys.readouterr().out
    stats = pd.read_parquet(out / "statistics.parquet")
    assert list(stats.columns[-2:]) == ["sink", "induction"] and stats["doc_id"].nunique() == 3
    assert len(pd.read_parquet(out / "samples.parquet")) == 3 and (out / "summary.md").exists()


def test_metadata_reaches_every_task(byte_checkpoint, task_dir, tmp_path):
    """``--metadata`` (e.g. RULER's tokenizer and lengths) is merged into each task's config."""
    import json

    out = tmp_path / "out"
    assert main(["eval", str(byte_checkpoint), "--tasks", "copy_mc", "--include-path", str(task_dir), "--limit", "1",
                 "--statistics", "sink", "--metadata", '{"max_seq_lengths": [64], "note": "x"}', "--out", str(out),
                 "--no-plots"]) == 0
    config = json.loads((out / "results.json").read_text())["configs"]["copy_mc"]
    assert config["metadata"]["max_seq_lengths"] == [64] and config["metadata"]["note"] == "x"
    assert json.loads((out / "evaluation.json").read_text())["settings"]["metadata"]["note"] == "x"


def test_torchrun_two_processes_then_merge(byte_checkpoint, task_dir, tmp_path, monkeypatch):
    """Two torchrun ranks split the documents; the merge answers every request from their parts
    (the model never runs) and holds every document exactly once."""
    import os
    import subprocess
    import sys

    from lm_eval.models.huggingface import HFLM

    out = tmp_path / "out"
    argv = ["eval", str(byte_checkpoint), "--tasks", "copy_mc", "--include-path", str(task_dir), "--limit", "5",
            "--statistics", "sink,induction", "--out", str(out), "--no-plots"]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "0", "-m", "circuit_stats.cli", *argv], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shard 0/2" in run.stdout and "shard 1/2" in run.stdout
    assert len(list((out / "requests").glob("*.json"))) == 5 * 4 and not (out / "results.json").exists()

    def no_model(*args, **kwargs):
        raise AssertionError("the merge ran the model")

    monkeypatch.setattr(HFLM, "_model_call", no_model)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert main(argv) == 0
    samples = pd.read_parquet(out / "samples.parquet")
    assert sorted(samples["doc_id"]) == [0, 1, 2, 3, 4]
    stats = pd.read_parquet(out / "statistics.parquet")
    heads = stats.groupby("doc_id").apply(lambda g: len(g[["layer", "head"]].drop_duplicates()))
    assert sorted(heads.index) == [0, 1, 2, 3, 4] and (heads == 2 * 4).all()
    # the merged statistics equal a single process's (the same committed requests)
    assert (out / "results.json").exists() and stats[["sink", "induction"]].notna().all().all()


def test_unknown_task_exits_2(byte_checkpoint, task_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", str(byte_checkpoint), "--tasks", "copy_mc,no_such_task", "--include-path", str(task_dir),
                 "--out", str(out)]) == 2
    assert "no_such_task" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_failing_request_is_recorded_and_exits_1(byte_checkpoint, task_dir, tmp_path, monkeypatch, capsys):
    """A request whose statistics are not finite stops the run: failures.json names it, exit 1,
    no tables; the requests finished before it stay committed."""
    import json

    import circuit_stats.evaluation.recording_lm as recording_lm
    from circuit_stats.finite import NonFiniteError

    real, calls = recording_lm.statistics_frame, []

    def nan_on_third(rec, statistics, what):
        calls.append(what)
        if len(calls) == 3:
            raise NonFiniteError(f"{what}: NaN in sink")
        return real(rec, statistics, what)

    monkeypatch.setattr(recording_lm, "statistics_frame", nan_on_third)
    out = tmp_path / "out"
    assert main(["eval", str(byte_checkpoint), "--tasks", "copy_mc", "--include-path", str(task_dir), "--limit", "2",
                 "--statistics", "sink", "--out", str(out), "--no-plots"]) == 1
    assert "failures.json" in capsys.readouterr().err
    failures = json.loads((out / "failures.json").read_text())
    assert len(failures) == 1 and "NonFiniteError" in failures[0]["error"] and failures[0]["request"] in calls[2]
    assert len(list((out / "requests").glob("*.json"))) == 2 and not (out / "results.json").exists()
