"""The report files written from a synthetic scan (see conftest.py)."""

import json

import pytest
from matplotlib.colors import to_hex

from circuit_stats.scans.report import write_report


def test_layers_never_first_token_and_report_files(tmp_path, synthetic_results):
    df = synthetic_results
    df.loc[(df.layer == 0) & (df.label == "first-token"), "label"] = "unclassified"
    df.to_parquet(tmp_path / "results.parquet")
    summary = write_report(tmp_path)
    assert summary["layers_never_first_token"] == [0]
    on_disk = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert on_disk["classes"]["first-token"]["onset"]["revision"] == "s40"
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "first-token onset / induction onset, in tokens: 4.0x" in md
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {
        "class_fractions.png", "heatmaps.png", "induction_trajectories.png"}


@pytest.fixture
def figures(monkeypatch):
    """The report's figures, kept instead of saved."""
    import circuit_stats.scans.report as report_mod

    kept = {}
    monkeypatch.setattr(report_mod, "save_figure", lambda fig, path: kept.__setitem__(path.name, fig))
    return kept


def local_scan(tmp_path, df):
    df = df.copy()
    df["model"] = "/abs/path/to/my_series"  # a local scan stores the absolute directory
    df.to_parquet(tmp_path / "results.parquet")
    return tmp_path


def test_plots_name_the_model_mark_the_onset_and_jump_and_mute_unclassified(tmp_path, synthetic_results, figures):
    write_report(local_scan(tmp_path, synthetic_results))
    md = (tmp_path / "report" / "summary.md").read_text()
    assert md.startswith("# circuit-stats report: my_series\n")
    frac = figures["class_fractions.png"]
    assert frac.get_suptitle() == "my_series: head classes over training (protocol xu2026)"
    ax = frac.axes[0]
    assert ax.get_xlabel() == "tokens seen in training" and ax.get_ylabel() == "share of heads in the class"
    lines = {line.get_label(): line for line in ax.lines}
    onset = lines["induction onset (s10)"]
    assert set(onset.get_xdata()) == {100.0}  # the induction onset's tokens
    assert lines["first-token onset (s40)"].get_xdata()[0] == 400.0
    assert to_hex(lines["unclassified"].get_color()) == "#d9d9d9"
    span = [p for p in ax.patches if p.get_label().startswith("sharpest")]
    assert len(span) == 1 and span[0].get_label() == "sharpest induction jump"
    heat = figures["heatmaps.png"]
    assert [a.get_xlabel() for a in heat.axes] == ["head index"] * len(heat.axes)
    assert "my_series" in heat.get_suptitle()
    traj = figures["induction_trajectories.png"]
    assert traj.axes[0].get_ylabel() == "sel_induction (the protocol's induction score)" and "my_series" in traj.axes[0].get_title()


def test_wide_token_range_gets_a_log_axis_and_a_linear_zoom(tmp_path, synthetic_results, figures):
    df = synthetic_results.copy()
    df["tokens"] = df["tokens"] * 10 ** df["step"].map({0: 0, 10: 1, 20: 2, 40: 3, 80: 4})  # 0 .. 8e6
    write_report(local_scan(tmp_path, df))
    main, zoom = figures["class_fractions.png"].axes[:2]
    assert main.get_xscale() == "symlog" and "log scale" in main.get_xlabel()
    assert zoom.get_xscale() == "linear" and "zoom" in zoom.get_title()
    lo, hi = zoom.get_xlim()
    assert lo < 0 < 1000 < hi < 20000  # the induction jump s0 (0 tokens) -> s10 (1,000 tokens), not beyond s20


def test_a_scan_without_any_classified_head_says_so(tmp_path, synthetic_results, figures):
    df = synthetic_results.copy()
    df["label"] = "unclassified"
    df["screen_induction"] = False
    write_report(local_scan(tmp_path, df))
    ax = figures["class_fractions.png"].axes[0]
    assert any("no head passed any class threshold" in t.get_text() for t in ax.texts)
    assert [line.get_label() for line in ax.lines] == ["unclassified"]
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "No head passed any class threshold in these 5 revisions" in md
    assert "no induction circuit" in figures["induction_trajectories.png"].axes[0].get_title()


def test_the_early_screen_sentence_reads_as_one_statement(tmp_path, synthetic_results):
    write_report(local_scan(tmp_path, synthetic_results))
    md = (tmp_path / "report" / "summary.md").read_text()
    assert ("First revision where at least 67% of these heads already count as induction heads: `s10` "
            "(step 10, 100 tokens). It comes 12.5% of the way through the scanned training, by tokens seen.") in md
    assert "of the scanned tokens" not in md


def test_a_revision_with_nan_scores_is_left_out_not_called_unclassified(tmp_path, synthetic_results):
    df = synthetic_results.copy()
    last = df.revision == "s80"
    df.loc[last, "sel_induction"] = float("nan")  # as a scan of NaN weights wrote them before the check
    df.loc[last, ["label", "screen_induction"]] = ["unclassified", False]
    df.to_parquet(tmp_path / "results.parquet")
    summary = write_report(tmp_path)
    assert summary["non_finite"] == ["s80"] and summary["revisions"][-1]["revision"] == "s40"
    assert summary["final_induction_circuit"] == [[0, 0], [0, 1], [0, 2], [0, 3]]  # s40's, not s80's empty one
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "`s80` holds NaN or infinite scores" in md and "at the last revision, `s40`): 4 heads" in md


def test_a_table_without_label_column_is_labelled_from_its_flags(tmp_path):
    """A retrieval scan written before retrieval labelled its heads: only is_retrieval."""
    import pandas as pd

    rows = [dict(model="m", revision=f"s{step}", step=step, tokens=step * 10, protocol="retrieval", layer=layer,
                 head=head, retrieval_score=float("nan") if step == 0 else 0.1 * head,
                 is_retrieval=step > 0 and head >= 2)
            for step in (0, 10, 20) for layer in range(2) for head in range(4)]
    pd.DataFrame(rows).to_parquet(tmp_path / "results.parquet")
    summary = write_report(tmp_path)
    assert summary["classes"]["retrieval"]["fraction"] == {"s0": 0.0, "s10": 0.5, "s20": 0.5}
    assert summary["non_finite"] == []  # retrieval_score is NaN by definition when no trial was copied


def test_the_report_gives_the_onset_interval_and_its_noise_test(tmp_path, synthetic_results):
    synthetic_results.assign(sel_induction_se=1.0).to_parquet(tmp_path / "results.parquet")
    write_report(tmp_path)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "lies between `s0` (step 0, 0 tokens) and `s10`" in md
    assert "the change exceeds noise: heads that turned induction moved by L0H1 +41.0 SE, L0H2 +41.0 SE" in md
