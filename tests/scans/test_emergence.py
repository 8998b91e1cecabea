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


def test_the_induction_onset_lies_between_two_revisions_and_is_tested_against_noise(synthetic_results):
    # s0 -> s10: heads (0, 1) and (0, 2) turn induction (sel_induction 2 -> 60)
    no_se = summarise(synthetic_results.copy())["classes"]["induction"]["onset_interval"]
    assert no_se["before"]["revision"] == "s0" and no_se["after"]["revision"] == "s10"
    assert no_se["change_z"] is None and no_se["exceeds_noise"] is None  # a table scanned before standard errors
    clear = summarise(synthetic_results.assign(sel_induction_se=1.0))["classes"]["induction"]["onset_interval"]
    assert clear["change_z"] == pytest.approx({"L0H1": 58 / 2**0.5, "L0H2": 58 / 2**0.5})
    assert clear["exceeds_noise"] is True
    noisy = summarise(synthetic_results.assign(sel_induction_se=25.0))["classes"]["induction"]["onset_interval"]
    assert noisy["change_z"]["L0H1"] == pytest.approx(58 / (25 * 2**0.5)) and noisy["exceeds_noise"] is False
    first = summarise(synthetic_results.copy(), {"induction_min_heads": 1})["classes"]["induction"]
    assert first["onset"]["revision"] == "s0" and first["onset_interval"]["before"] is None


def test_the_first_token_onset_is_tested_against_noise_on_its_own_score(synthetic_results):
    df = synthetic_results.assign(sel_first_token=synthetic_results["label"].eq("first-token") * 58.0 + 2.0,
                                  sel_first_token_se=1.0)
    interval = summarise(df)["classes"]["first-token"]["onset_interval"]
    assert (interval["before"]["revision"], interval["after"]["revision"]) == ("s20", "s40")
    assert interval["change_z"] == pytest.approx({"L0H3": 58 / 2**0.5, "L1H3": 58 / 2**0.5})
    assert interval["exceeds_noise"] is True
