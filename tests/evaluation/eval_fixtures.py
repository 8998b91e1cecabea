"""Fixtures of the evaluation tests, imported by them: the bundled demo checkpoint and the worked
example's lm-eval tasks (a multiple-choice copy task and a generation needle task)."""

from pathlib import Path

import pytest

CHECKPOINT = Path(__file__).resolve().parents[2] / "circuit_stats" / "data" / "demo_series" / "checkpoint-1600"


@pytest.fixture(scope="session")
def byte_checkpoint() -> Path:
    """checkpoint-1600 as bundled: it ships its byte-level tokenizer (``tokenizer.json``, 256 byte
    ids, no BOS added), so lm-eval loads it like a hub model."""
    assert (CHECKPOINT / "tokenizer.json").exists()
    return CHECKPOINT


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    """The worked example's tasks (``circuit_stats.evaluation.demo_tasks``). (Skips without lm-eval.)"""
    pytest.importorskip("lm_eval")
    from circuit_stats.evaluation.demo_tasks import write_demo_tasks

    return write_demo_tasks(tmp_path_factory.mktemp("tasks"))
