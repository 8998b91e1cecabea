"""The bundled live table of the demo run (circuit_stats/data/demo_series_live)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from transformers import AutoModelForCausalLM

import circuit_stats
from circuit_stats.demo.live_plot import live_series_dir
from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS, demo_series_dir

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def live():
    return pd.read_parquet(live_series_dir() / "results.parquet")


def test_bundled_live_table_covers_the_run_every_10_steps(live):
    assert sorted(live.step.unique()) == list(range(0, 1601, 10))
    assert not live.duplicated(["step", "layer", "head"]).any() and len(live) == 161 * 8
    settings = json.loads((live_series_dir() / "monitor.json").read_text())
    assert settings["protocol"] == "repeat"
    assert {k: settings["options"][k] for k in DEMO_REPEAT_OPTIONS} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_REPEAT_OPTIONS.items()}


def test_bundled_live_table_locates_the_induction_onset_between_checkpoints(live):
    counts = live[live.label == "induction"].groupby("step").size()
    assert counts.index.min() == 1040 and counts.loc[1040] == 3 and counts.loc[1050] == 4


def test_step0_row_equals_scoring_the_bundled_checkpoint(live):
    # Both runs start from the same initial weights (seeded), and the monitor scores after the
    # float16 save: step 0 must equal scoring checkpoint-0 (to float32 rounding: the training
    # process ran with one thread, so its reductions may be ordered differently).
    model = AutoModelForCausalLM.from_pretrained(demo_series_dir() / "checkpoint-0", attn_implementation="circuit_stats",
                                                 dtype="float32")
    offline = circuit_stats.score_heads(model, "repeat", progress=False, **DEMO_REPEAT_OPTIONS)
    cols = ["layer", "head", "previous_token", "induction_offset", "duplicate_offset", "sink", "label"]
    pd.testing.assert_frame_equal(live[live.step == 0][cols].reset_index(drop=True), offline[cols], rtol=1e-5)
