"""Monitor in a plain PyTorch loop, the scoring guard and the results writer."""

from __future__ import annotations

import os
import random
import stat

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_stats.training import Monitor, monitor as monitor_module
from circuit_stats.training.results import LiveResults
from circuit_stats.training.scoring import scoring_mode
from training.helpers import OPTIONS, RepeatedBytes, tiny_training_model

pytestmark = pytest.mark.hf


def train_loop(model, monitor, start: int, stop: int, seed: int = 0):
    """Plain loop: score (on the grid) before each step's update, and after the last one."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = RepeatedBytes(n=8 * stop, seq_len=32, seed=seed).ids
    for step in range(start, stop):
        monitor.step(step)
        batch = data[8 * step: 8 * step + 8]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    monitor.step(stop)


def test_plain_loop_writes_the_grid_and_logs(tmp_path):
    model = tiny_training_model()
    seen = []
    mon = Monitor(model, every=3, out=tmp_path, tokens_per_step=256, log=lambda m, s: seen.append((s, m)), **OPTIONS)
    train_loop(model, mon, 0, 7)
    table = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(table.step.unique()) == [0, 3, 6]
    assert table.groupby("step").size().tolist() == [8, 8, 8]
    assert table.tokens.tolist() == [s * 256 for s in table.step]
    assert table.model.iloc[0] == "GPTNeoXForCausalLM"
    assert [s for s, _ in seen] == [0, 3, 6]
    assert seen[1][1]["circuit_stats/induction_offset/L1H2"] == table[(table.step == 3) & (table.layer == 1)
                                                               & (table["head"] == 2)].induction_offset.item()
    pd.testing.assert_frame_equal(mon.results, table)
    assert model.training and model.config._attn_implementation == "sdpa"


def test_restart_drops_rows_from_the_abandoned_part_of_a_run(tmp_path):
    model = tiny_training_model()
    train_loop(model, Monitor(model, every=2, out=tmp_path, **OPTIONS), 0, 6)
    assert sorted(pd.read_parquet(tmp_path / "results.parquet").step.unique()) == [0, 2, 4, 6]
    # restart from a checkpoint at step 3: rows 4 and 6 belong to the killed run
    mon = Monitor(model, every=2, out=tmp_path, **OPTIONS)
    assert mon.step(3) is None
    assert sorted(pd.read_parquet(tmp_path / "results.parquet").step.unique()) == [0, 2]
    assert mon.step(4) is not None and mon.step(4) is None  # never twice
    table = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(table.step.unique()) == [0, 2, 4] and not table.duplicated(["step", "layer", "head"]).any()


def test_other_settings_are_refused_in_the_same_directory(tmp_path):
    model = tiny_training_model()
    Monitor(model, every=2, out=tmp_path, **OPTIONS).step(0)
    with pytest.raises(ValueError, match="other settings"):
        Monitor(model, every=2, out=tmp_path, **dict(OPTIONS, seq_len=8)).step(2)


def test_only_the_main_process_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor_module, "is_main_process", lambda: False)
    mon = Monitor(tiny_training_model(), every=1, out=tmp_path, **OPTIONS)
    assert mon.step(0) is None and mon.step(1) is None
    assert not any(tmp_path.iterdir())


def test_bad_arguments(tmp_path):
    model = tiny_training_model()
    for bad in [0, -1, 1.5, True]:
        with pytest.raises(ValueError, match="every"):
            Monitor(model, every=bad, out=tmp_path)
    with pytest.raises(ValueError, match="unknown repeat options"):
        Monitor(model, every=2, out=tmp_path, n_seq=4)
    with pytest.raises(ValueError, match="texts"):
        Monitor(model, every=2, out=tmp_path, texts=["abc"])
    with pytest.raises(ValueError, match="global_step"):
        Monitor(model, every=2, out=tmp_path, **OPTIONS).step(-1)
    assert not any(tmp_path.iterdir())


def test_scoring_mode_restores_rng_mode_and_attention_even_on_error():
    model = tiny_training_model()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = (torch.rand(4), np.random.rand(4), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    with pytest.raises(RuntimeError, match="boom"):
        with scoring_mode(model):
            assert not model.training and model.config._attn_implementation == "circuit_stats"
            assert not torch.is_grad_enabled()
            torch.rand(9), np.random.rand(9), random.random()
            raise RuntimeError("boom")
    got = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert model.training and model.config._attn_implementation == "sdpa" and torch.is_grad_enabled()


def test_table_is_written_atomically_with_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        table = LiveResults(tmp_path, model="m", protocol="repeat", options={})
        scores = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "induction": [0.25, 0.5], "label": ["a", "b"]})
        table.add(3, 96, scores)
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "results.parquet").stat().st_mode)
    assert mode == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor.json", "results.parquet"]  # no temp left
    back = pd.read_parquet(tmp_path / "results.parquet")
    assert back.revision.tolist() == ["step3", "step3"] and back.tokens.tolist() == [96, 96]
    with pytest.raises(ValueError, match="already"):
        table.add(3, 96, scores)


def test_nan_weights_raise_naming_the_step_and_write_no_row(tmp_path):
    from circuit_stats.finite import NonFiniteError

    model = tiny_training_model()
    monitor = Monitor(model, every=2, out=tmp_path / "run", **OPTIONS)
    assert monitor.step(0) is not None
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.query_key_value.weight.fill_(float("nan"))  # training diverged
    with pytest.raises(NonFiniteError, match=r"step 2: .* NaN or infinite in 4 of 8 rows, first at layer 1"):
        monitor.step(2)
    assert set(pd.read_parquet(tmp_path / "run" / "results.parquet").step) == {0}
