"""Emergence analytics on a synthetic xu2026-style scan with known answers."""

import json

import pandas as pd
import pytest

from circuit_stats.report import summarise, write_report

# 5 revisions x 2 layers x 4 heads. Induction screen: 1, 3, 4, 4, 4 heads; first-token labels:
# 0, 1, 3, 5, 6 heads (fractions 0, .125, .375, .625, .75), never in layer 0.
REVS = [("s0", 0, 0), ("s10", 10, 100), ("s20", 20, 200), ("s40", 40, 400), ("s80", 80, 800)]
INDUCTION = [{(0, 0)}, {(0, 0), (0, 1), (0, 2)}, {(0, 1), (0, 2), (0, 3), (1, 3)}, {(0, 0), (0, 1), (0, 2), (0, 3)},
             {(0, 0), (0, 1), (0, 2), (0, 3)}]
SINKS = [set(), {(1, 0)}, {(1, 0), (1, 1), (1, 2)}, {(1, 0), (1, 1), (1, 2), (1, 3), (0, 3)},
         {(1, 0), (1, 1), (1, 2), (1, 3), (0, 3), (0, 2)}]


def table():
    rows = []
    for (rev, step, tokens), ind, sinks in zip(REVS, INDUCTION, SINKS):
        for layer in range(2):
            for head in range(4):
                h = (layer, head)
                label = "first-token" if h in sinks else ("induction" if h in ind else "unclassified")
                rows.append(dict(model="m", revision=rev, step=step, tokens=tokens, protocol="xu2026", layer=layer,
                                 head=head, sel_induction=60.0 if h in ind else 2.0, screen_induction=h in ind,
                                 label=label))
    return pd.DataFrame(rows)


def test_summary_numbers():
    s = summarise(table())
    assert s["classes"]["induction"]["onset"] == {"revision": "s10", "step": 10, "tokens": 100}
    assert s["classes"]["first-token"]["onset"] == {"revision": "s40", "step": 40, "tokens": 400}
    assert s["induction_to_sink_onset_ratio_tokens"] == pytest.approx(4.0)
    jump = s["classes"]["first-token"]["sharpest_jump"]
    assert (jump["before"]["revision"], jump["after"]["revision"]) == ("s10", "s20")
    assert (jump["fraction_before"], jump["fraction_after"]) == (0.125, 0.375)
    assert s["final_induction_circuit"] == [[0, 0], [0, 1], [0, 2], [0, 3]]
    recall = s["early_screen_recall"]["per_revision"]
    assert recall == {"s0": 0.25, "s10": 0.75, "s20": 0.75, "s40": 1.0, "s80": 1.0}
    first = s["early_screen_recall"]["first_reaching_target"]
    assert first["revision"] == "s10" and first["fraction_of_total_tokens"] == pytest.approx(100 / 800)
    assert s["layers_never_first_token"] == []  # layer 0 gets a sink head at s40
    s2 = summarise(table(), {"induction_min_heads": 4, "first_token_min_fraction": 0.7})
    assert s2["classes"]["induction"]["onset"]["revision"] == "s20"
    assert s2["classes"]["first-token"]["onset"]["revision"] == "s80"


def test_layers_never_first_token_and_report_files(tmp_path):
    df = table()
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
