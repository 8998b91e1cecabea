"""The command line: the demo, revisions, report and scan commands."""

import json
import re
import shutil

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
    assert lines[0].split("\t") == ["revision", "step", "tokens"]  # a header, then one line per revision
    assert len(lines) == 11 and lines[1].split("\t") == ["step1", "1", "2097152"]
    assert main(["report", str(tmp_path)]) == 2
    assert "run `circuit-stats scan` first" in capsys.readouterr().err


def test_cli_scan_on_a_local_directory(tmp_path):
    from circuit_stats.demo.series import demo_series_dir

    out = tmp_path / "scan"
    code = main(["scan", str(demo_series_dir()), "--revisions", "checkpoint-0,checkpoint-1600", "--protocol", "natural",
                 "--out", str(out), "--option", "max_tokens=200", "--tokenizer", "bytes", "--report"])
    assert code == 0
    table = pd.read_parquet(out / "results.parquet")
    assert set(table.revision) == {"checkpoint-0", "checkpoint-1600"}
    assert (out / "report" / "summary.json").exists()
    assert set(pd.read_parquet(out / "results.parquet").revision) == {"checkpoint-0", "checkpoint-1600"}


def series_copy(tmp_path, names, corrupt=()):
    """Some demo checkpoints copied into ``tmp_path/series``; ``corrupt`` ones get broken weights."""
    import shutil

    from circuit_stats.demo.series import demo_series_dir

    root = tmp_path / "series"
    for name in names:
        shutil.copytree(demo_series_dir() / name, root / name)
    for name in corrupt:
        (root / name / "model.safetensors").write_bytes(b"not a safetensors file")
    return root


SMALL = ["--protocol", "repeat", "--option", "seq_len=8", "--option", "n_sequences=2",
         "--option", "vocab_range=[32, 127]"]


@pytest.mark.parametrize("args, message", [
    (["--option", "seq_len=abc"], "--option: repeat option 'seq_len' must be int"),
    (["--option", "n_seqs=2"], "--option: unknown repeat options ['n_seqs']"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got '0'"),
    (["--device", "cuda:99"], "--device 'cuda:99'"),
    (["--revisions", ""], "--revisions: the revision spec is empty"),
    (["--revisions", " , "], "--revisions: the revision spec is empty"),
    (["--revisions", "every:x"], "--revisions: revision spec 'every:x'"),
    (["--revisions", "checkpoint-7"], "--revisions: revisions not in the catalog"),
    (["--shard", "2/2"], "--shard '2/2'"),
    (["--prefetch", "-1"], "--prefetch"),
])
def test_cli_bad_settings_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    from circuit_stats.demo.series import demo_series_dir

    out = tmp_path / "out"
    argv = ["scan", str(demo_series_dir()), "--out", str(out), "--protocol", "repeat", "--revisions", "checkpoint-0"]
    assert main(argv + args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_log_1_is_one_revision(capsys):
    from circuit_stats.demo.series import demo_series_dir

    assert main(["revisions", str(demo_series_dir()), "--revisions", "log:1"]) == 0
    assert capsys.readouterr().out.splitlines() == ["revision\tstep\ttokens", "checkpoint-1600\t1600\t4915200"]


def test_cli_failed_revisions_give_a_nonzero_exit_with_a_summary(tmp_path, capsys):
    root = series_copy(tmp_path, ["checkpoint-0", "checkpoint-50", "checkpoint-100"], corrupt=["checkpoint-50"])
    out = tmp_path / "scan"
    assert main(["scan", str(root), "--revisions", "all", "--out", str(out)] + SMALL) == 1
    captured = capsys.readouterr()
    assert "scanned 2 revisions" in captured.out and "1 failed" in captured.out
    assert "failed revisions (1)" in captured.err and "checkpoint-50:" in captured.err
    # the rerun counts this run only: nothing new scanned, the failure retried and still failing
    assert main(["scan", str(root), "--revisions", "all", "--out", str(out)] + SMALL) == 1
    assert "scanned 0 revisions" in capsys.readouterr().out


def test_cli_same_directory_spelled_differently_resumes(tmp_path, monkeypatch, capsys):
    root = series_copy(tmp_path, ["checkpoint-0", "checkpoint-50"])
    monkeypatch.chdir(tmp_path)
    assert main(["scan", "series/", "--revisions", "checkpoint-0", "--out", "scan/"] + SMALL) == 0
    assert main(["scan", str(root), "--revisions", "all", "--out", str(tmp_path / "scan")] + SMALL) == 0
    assert re.search(r"scanned 1 revisions in [\d.]+s \(1 already done\)", capsys.readouterr().out)


def test_cli_scan_tokenizer_setting(tmp_path, capsys):
    from circuit_stats.demo.series import demo_series_dir

    out = tmp_path / "scan"
    assert main(["scan", str(demo_series_dir()), "--revisions", "checkpoint-0", "--protocol", "repeat",
                 "--tokenizer", "bytes", "--out", str(out)]) == 2
    assert "--tokenizer" in capsys.readouterr().err and not out.exists()
    # A text protocol on checkpoints that ship no tokenizer: the revision fails, saying what to pass.
    bare = tmp_path / "bare"
    shutil.copytree(demo_series_dir() / "checkpoint-0", bare / "checkpoint-0", ignore=shutil.ignore_patterns("tokenizer*"))
    assert main(["scan", str(bare), "--revisions", "checkpoint-0", "--protocol", "natural",
                 "--option", "max_tokens=50", "--out", str(out)]) == 1
    assert "--tokenizer bytes" in capsys.readouterr().out + "".join(
        p.read_text() for p in (out / "failed").glob("*.json"))


def nan_weights(checkpoint):
    """Overwrite ``checkpoint``'s weights with a copy whose first attention layer is NaN."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    with torch.no_grad():
        model.gpt_neox.layers[0].attention.query_key_value.weight.fill_(float("nan"))
    model.save_pretrained(checkpoint)


def test_cli_a_revision_with_nan_weights_fails_and_the_report_leaves_it_out(tmp_path, capsys):
    root = series_copy(tmp_path, ["checkpoint-0", "checkpoint-1600"])
    nan_weights(root / "checkpoint-1600")
    out = tmp_path / "scan"
    demo = ["--option", "seq_len=32", "--option", "n_sequences=8", "--option", "vocab_range=[32, 127]"]
    assert main(["scan", str(root), "--revisions", "all", "--out", str(out), "--protocol", "repeat", "--report",
                 *demo]) == 1
    err = capsys.readouterr().err
    assert "checkpoint-1600: NonFiniteError" in err and "NaN" in err
    assert json.loads((out / "failed" / "checkpoint-1600.json").read_text())["error"].startswith("NonFiniteError")
    assert set(pd.read_parquet(out / "results.parquet").revision) == {"checkpoint-0"}
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert list(summary["failed"]) == ["checkpoint-1600"] and summary["revisions"][-1]["revision"] == "checkpoint-0"
    md = (out / "report" / "summary.md").read_text()
    assert "at the last revision, `checkpoint-0`" in md and "`checkpoint-1600` failed" in md


RETRIEVAL = ["--protocol", "retrieval", "--tokenizer", "bytes", "--option", "context_lengths=[48]",
             "--option", "depths=[0.5]", "--option", "n_needles=1", "--option", "needle_len=8", "--option", "prefix_len=2"]


@pytest.mark.parametrize("option, message", [
    ("n_needles=0", "'n_needles' must be an int >= 1, got 0"),
    ("seed=-3", "'seed' must be an int in [0, 4294967295], got -3"),
    ("threshold=-0.5", "'threshold' must be a number in (0.0, 1.0], got -0.5"),
    ("success_recall=3", "'success_recall' must be a number in [0.0, 1.0), got 3"),
])
def test_cli_bad_retrieval_options_exit_2_before_loading_and_the_corrected_run_works(tmp_path, capsys, monkeypatch,
                                                                                    option, message):
    import circuit_stats.scans.scorer as scan_module
    from circuit_stats.demo.series import demo_series_dir

    loads = []
    real_load = scan_module.load_checkpoint
    monkeypatch.setattr(scan_module, "load_checkpoint", lambda *a, **k: (loads.append(a), real_load(*a, **k))[1])
    out = tmp_path / "scan"
    argv = ["scan", str(demo_series_dir()), "--revisions", "checkpoint-0,checkpoint-1600", "--out", str(out), *RETRIEVAL]
    assert main(argv + ["--option", option]) == 2
    assert f"--option: option {message}" in capsys.readouterr().err
    assert not out.exists() and not loads, "nothing loaded, nothing written"
    if option == "n_needles=0":  # the corrected run is not refused for 'other settings'
        assert main(argv + ["--report"]) == 0
        assert len(loads) == 2
        summary = json.loads((out / "report" / "summary.json").read_text())
        assert summary["protocol"] == "retrieval" and "retrieval" in summary["classes"]
        table = pd.read_parquet(out / "results.parquet")
        assert set(table.label) <= {"retrieval", "unclassified"} and table.label.eq("retrieval").any()


def test_a_local_directory_is_scanned_whole_by_default(tmp_path):
    from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS, demo_series_dir

    series = tmp_path / "series"
    series.mkdir()
    for name in ("checkpoint-0", "checkpoint-1600"):
        (series / name).symlink_to(demo_series_dir() / name)  # links out of the directory: real checkpoints
    options = [f"{k}={json.dumps(v)}" for k, v in {**DEMO_REPEAT_OPTIONS, "n_sequences": 4}.items()]
    argv = ["scan", str(series), "--protocol", "repeat", "--out", str(tmp_path / "o"), "--dtype", "float32"]
    assert main(argv + [x for o in options for x in ("--option", o)]) == 0  # no --revisions: all, not paper
    assert set(pd.read_parquet(tmp_path / "o" / "results.parquet").revision) == {"checkpoint-0", "checkpoint-1600"}


def test_cli_scan_text_protocol_uses_the_bundled_tokenizer(tmp_path):
    """The bundled checkpoints ship a byte-level tokenizer: --tokenizer bytes is optional."""
    from circuit_stats.demo.series import demo_series_dir

    scores = {}
    for name, extra in (("own", []), ("bytes", ["--tokenizer", "bytes"])):
        out = tmp_path / name
        assert main(["scan", str(demo_series_dir()), "--revisions", "checkpoint-1600", "--protocol", "natural",
                     "--option", "max_tokens=120", "--out", str(out)] + extra) == 0
        scores[name] = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(scores["own"].drop(columns=["tokenizer"], errors="ignore"),
                                  scores["bytes"].drop(columns=["tokenizer"], errors="ignore"))
    assert scores["own"]["induction"].max() > 0.3  # the texts reached the model as bytes
