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
