"""The report files written from a synthetic scan (see conftest.py)."""

import json

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
