"""circuit-stats eval: settings checked before anything loads (exit 2, nothing written), the
install hint without lm-eval, and a run on the bundled model writing its tables."""

import pandas as pd
import pytest

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
