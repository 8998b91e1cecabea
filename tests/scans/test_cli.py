"""The command line: the demo, revisions, report and scan commands."""

import json

import pandas as pd
import pytest

from circuit_stats.cli import main

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out)]) == 0
    return out


def test_demo_report_finds_the_induction_onset(demo_run):
    summary = json.loads((demo_run / "report" / "summary.json").read_text())
    assert summary["classes"]["induction"]["onset"]["revision"] == "checkpoint-1050"
    jump = summary["classes"]["induction"]["sharpest_jump"]
    assert (jump["before"]["revision"], jump["after"]["revision"]) == ("checkpoint-1000", "checkpoint-1050")
    assert summary["final_induction_circuit"] == [[1, 0], [1, 1], [1, 2], [1, 3]]
    assert summary["early_screen_recall"]["first_reaching_target"]["revision"] == "checkpoint-1050"
    assert summary["layers_never_first_token"] == [0, 1]
    assert summary["classes"]["first-token"]["onset"] is None
    for f in ["summary.md", "class_fractions.png", "heatmaps.png", "induction_trajectories.png"]:
        assert (demo_run / "report" / f).stat().st_size > 0
    assert "checkpoint-1050" in (demo_run / "report" / "summary.md").read_text()
    table = pd.read_parquet(demo_run / "results.parquet")
    assert table.revision.nunique() == 23 and len(table) == 23 * 8


def test_rerunning_the_demo_skips_finished_revisions(demo_run, capsys):
    assert main(["demo", "--out", str(demo_run)]) == 0
    assert "induction onset: checkpoint-1050" in capsys.readouterr().out


def test_cli_revisions_and_errors(capsys, tmp_path):
    assert main(["revisions", "EleutherAI/pythia-1b", "--offline", "--revisions", "paper"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 and lines[0].split("\t") == ["step1", "1", "2097152"]
    assert main(["report", str(tmp_path)]) == 2
    assert "run `circuit-stats scan` first" in capsys.readouterr().err


def test_cli_scan_on_a_local_directory(tmp_path):
    from circuit_stats.demo.series import demo_series_dir

    out = tmp_path / "scan"
    code = main(["scan", str(demo_series_dir()), "--revisions", "checkpoint-0,checkpoint-1600", "--protocol", "natural",
                 "--out", str(out), "--option", "max_tokens=200", "--report"])
    assert code == 0
    table = pd.read_parquet(out / "results.parquet")
    assert set(table.revision) == {"checkpoint-0", "checkpoint-1600"}
    assert (out / "report" / "summary.json").exists()
