"""CircuitStatsCallback in real (tiny) Trainer runs: the table, the logs, the weights, resuming."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

import circuit_stats
from circuit_stats.training import CircuitStatsCallback, scoring
from training.helpers import OPTIONS, make_trainer, train_with_callback

pytestmark = pytest.mark.hf

SCORE_COLUMNS = ["layer", "head", "previous_token", "induction_offset", "duplicate_offset", "sink", "label"]


class LogCapture(TrainerCallback):
    """What an integration (TensorBoard, W&B) receives: every on_log event."""

    def __init__(self):
        self.events = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append((state.global_step, dict(logs)))


def rng_hungry(score_heads):
    """score_heads that also draws from every global generator, as a protocol that samples with
    the global RNG would: the callback must hide that from training."""

    def wrapped(*args, **kwargs):
        torch.rand(7), np.random.rand(3), random.random()
        return score_heads(*args, **kwargs)

    return wrapped


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One monitored run: 6 steps, scored every 2, checkpoints every 2 (with an RNG-hungry scorer)."""
    out = tmp_path_factory.mktemp("monitored")
    capture = LogCapture()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scoring, "score_heads", rng_hungry(scoring.score_heads))
        trainer, callback = train_with_callback(out, every=2, callbacks=[capture])
    return out, trainer, callback, capture


def test_table_has_one_row_per_step_layer_head_in_scan_format(run):
    out, trainer, _, _ = run
    table = pd.read_parquet(out / "circuit_stats" / "results.parquet")
    assert list(table.columns[:7]) == ["model", "revision", "step", "tokens", "protocol", "layer", "head"]
    assert "label" in table.columns
    assert sorted(table.step.unique()) == [0, 2, 4, 6]
    assert not table.duplicated(["step", "layer", "head"]).any()
    assert len(table) == 4 * 2 * 4  # steps x layers x heads
    assert set(table.revision) == {"step0", "step2", "step4", "step6"}
    assert (table.protocol == "repeat").all()


def test_table_equals_scoring_the_saved_checkpoints_offline(run):
    out, _, _, _ = run
    table = pd.read_parquet(out / "circuit_stats" / "results.parquet")
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [int(p.name.split("-")[1]) for p in checkpoints] == [2, 4, 6]
    for ckpt in checkpoints:
        step = int(ckpt.name.split("-")[1])
        model = AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="circuit_stats")
        offline = circuit_stats.score_heads(model, "repeat", progress=False, **OPTIONS)[SCORE_COLUMNS]
        live = table[table.step == step][SCORE_COLUMNS].reset_index(drop=True)
        pd.testing.assert_frame_equal(live, offline, check_exact=True)
    # the steps differ from each other (the check above is not comparing constants)
    assert not table[table.step == 2].induction_offset.equals(table[table.step == 6].induction_offset)


def test_training_mode_and_attention_implementation_are_restored(run):
    _, trainer, _, _ = run
    assert trainer.model.training
    assert trainer.model.config._attn_implementation == "sdpa"


def test_monitoring_does_not_change_the_trained_weights(run, tmp_path):
    _, monitored, _, _ = run
    plain = make_trainer(tmp_path)  # same seed, data and schedule, no callback
    plain.train()
    a, b = monitored.model.state_dict(), plain.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # and training did move the weights (else equality would prove nothing)
    init = make_trainer(tmp_path / "init").model.state_dict()
    assert not all(torch.equal(init[n], b[n]) for n in b)


def test_trainer_receives_counts_and_per_head_scores(run):
    _, trainer, _, capture = run
    logged = {step: logs for step, logs in capture.events if "circuit_stats/heads/induction" in logs}
    assert sorted(logged) == [0, 2, 4, 6]
    table = pd.read_parquet(run[0] / "circuit_stats" / "results.parquet")
    for step, logs in logged.items():
        rows = table[table.step == step]
        assert sum(v for k, v in logs.items() if k.startswith("circuit_stats/heads/")) == len(rows)
        assert logs["circuit_stats/heads/unclassified"] == (rows.label == "unclassified").sum()
        for r in rows.itertuples():
            assert logs[f"circuit_stats/induction_offset/L{r.layer}H{r.head}"] == r.induction_offset
            assert logs[f"circuit_stats/sink/L{r.layer}H{r.head}"] == r.sink
    history = [h for h in trainer.state.log_history if "circuit_stats/heads/induction" in h]
    assert [h["step"] for h in history] == [0, 2, 4, 6]


def test_report_works_on_the_live_table(run):
    from circuit_stats.scans.report import write_report

    out = run[0] / "circuit_stats"
    summary = write_report(out)
    assert summary["n_revisions"] == 4 and summary["n_heads"] == 8
    assert [r["revision"] for r in summary["revisions"]] == ["step0", "step2", "step4", "step6"]
    for name in ["summary.json", "summary.md", "class_fractions.png", "heatmaps.png"]:
        assert (out / "report" / name).stat().st_size > 0


def test_resumed_run_keeps_earlier_rows_and_replaces_later_ones(tmp_path):
    # A run scored every 2 steps, checkpointed every 4, "killed" after step 6: its table holds
    # 0, 2, 4, 6 but its last checkpoint is 4.
    train_with_callback(tmp_path, every=2, max_steps=6, save_steps=4)
    path = tmp_path / "circuit_stats" / "results.parquet"
    killed = pd.read_parquet(path)
    assert sorted(killed.step.unique()) == [0, 2, 4, 6]
    for extra in tmp_path.glob("checkpoint-*"):
        if extra.name != "checkpoint-4":
            import shutil

            shutil.rmtree(extra)
    # Mark the rows so that we can tell kept from re-scored rows.
    marked = killed.copy()
    marked.loc[marked.step.isin([2, 6]), "induction_offset"] = -1.0
    marked.to_parquet(path, index=False)

    train_with_callback(tmp_path, every=2, max_steps=8, save_steps=4, resume=str(tmp_path / "checkpoint-4"))
    table = pd.read_parquet(path)
    assert sorted(table.step.unique()) == [0, 2, 4, 6, 8]
    assert not table.duplicated(["step", "layer", "head"]).any()
    assert (table[table.step == 2].induction_offset == -1.0).all()  # before the checkpoint: kept
    assert (table[table.step == 6].induction_offset >= 0).all()  # after it: scored again
    # step 4 was re-scored from checkpoint-4's weights: the same numbers as the killed run's
    pd.testing.assert_frame_equal(table[table.step == 4][SCORE_COLUMNS].reset_index(drop=True),
                                  killed[killed.step == 4][SCORE_COLUMNS].reset_index(drop=True), check_exact=True)


def test_bad_arguments_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="every"):
        CircuitStatsCallback(every=0)
    with pytest.raises(ValueError, match="protocol"):
        CircuitStatsCallback(every=2, protocol="nope")
    with pytest.raises(ValueError, match="unknown repeat options"):
        CircuitStatsCallback(every=2, n_sequence=3)
    trainer = make_trainer(tmp_path, callbacks=[CircuitStatsCallback(every=2, **OPTIONS)])
    with pytest.raises(RuntimeError, match="attach"):
        trainer.train()


RETRIEVAL = dict(context_lengths=[48], depths=[0.5], n_needles=1, needle_len=8, prefix_len=2, tokenizer="bytes",
                 texts=["the mill and the river and the bridge, the mill and the river"])


def test_the_retrieval_protocol_scores_inside_a_training_run(tmp_path):
    """retrieval generates (it reads logits): it runs on the full model, not the LM-head-less base."""
    trainer = make_trainer(tmp_path, max_steps=2, save_steps=2)
    CircuitStatsCallback(every=2, protocol="retrieval", **RETRIEVAL).attach(trainer)
    trainer.train()
    table = pd.read_parquet(tmp_path / "circuit_stats" / "results.parquet")
    assert sorted(table.step.unique()) == [0, 2] and (table.protocol == "retrieval").all()
    assert {"retrieval_score", "retrieval_score_all_trials", "is_retrieval", "label"} <= set(table.columns)
    assert set(table.label) <= {"retrieval", "unclassified"}
    assert table.retrieval_score_all_trials.notna().all()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-2", attn_implementation="circuit_stats")
    offline = circuit_stats.score_heads(model, "retrieval", progress=False, **RETRIEVAL)
    live = table[table.step == 2].reset_index(drop=True)
    pd.testing.assert_series_equal(live.retrieval_score_all_trials, offline.retrieval_score_all_trials)
    from circuit_stats.scans.report import write_report

    assert write_report(tmp_path / "circuit_stats")["protocol"] == "retrieval"
