"""Emergence analytics on a synthetic xu2026-style scan with known answers (see conftest.py)."""

import pytest

from circuit_stats.scans.emergence import summarise


def test_summary_numbers(synthetic_results):
    s = summarise(synthetic_results.copy())
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
    s2 = summarise(synthetic_results.copy(), {"induction_min_heads": 4, "first_token_min_fraction": 0.7})
    assert s2["classes"]["induction"]["onset"]["revision"] == "s20"
    assert s2["classes"]["first-token"]["onset"]["revision"] == "s80"
