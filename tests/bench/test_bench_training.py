"""The training-overhead benchmark harness runs at tiny sizes and writes well-formed results
(timings here mean nothing)."""

import json

import pytest

from bench import bench_training

pytestmark = pytest.mark.hf


def test_training_overhead_harness_quick(tmp_path):
    assert bench_training.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("training-quick-*.json")
    data = json.loads(path.read_text())
    for key in ("device", "torch", "transformers", "date", "load_average"):
        assert data["environment"][key] is not None
    assert "noisy" in data["noise"]
    (row,) = data["results"]
    assert row["n_scorings"] == 2 and row["step_s"] > 0 and row["score_s"] > 0
    assert row["overhead_at"]["500"] == pytest.approx(row["score_s"] / (500 * row["step_s"]))
