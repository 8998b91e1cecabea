"""evaluate(): lm-eval's results unchanged by the recording, statistics for every document, and
the demo model's copying visible in its layer-1 induction heads."""

import json

import pandas as pd
import pytest
from eval_fixtures import byte_checkpoint, task_dir  # noqa: F401 (fixtures)
import torch

pytest.importorskip("lm_eval")

LIMIT = 12


def load(checkpoint):
    import circuit_stats  # noqa: F401  (registers the attention implementation)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="circuit_stats")
    return model.eval(), AutoTokenizer.from_pretrained(checkpoint)


def plain_hf_results(checkpoint, task_dir, tasks):
    """What ``lm_eval --model hf --model_args pretrained=CHECKPOINT,dtype=float32`` reports."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model="hf", model_args={"pretrained": str(checkpoint), "dtype": "float32", "device": "cpu"},
                           tasks=tasks, task_manager=TaskManager(include_path=str(task_dir)), limit=LIMIT,
                           log_samples=True)


@pytest.fixture(scope="module")
def evaluated(byte_checkpoint, task_dir, tmp_path_factory):
    from circuit_stats.evaluation import evaluate

    model, tok = load(byte_checkpoint)
    out = tmp_path_factory.mktemp("eval") / "out"
    results = evaluate(model, ["copy_mc", "needle"], tokenizer=tok, out=out, include_path=task_dir, limit=LIMIT)
    return out, results


def test_results_equal_lm_eval_hf(evaluated, byte_checkpoint, task_dir):
    out, results = evaluated
    plain = plain_hf_results(byte_checkpoint, task_dir, ["copy_mc", "needle"])
    written = json.loads((out / "results.json").read_text())
    for task, metric in (("copy_mc", "acc,none"), ("needle", "exact_match,none")):
        assert written["results"][task][metric] == plain["results"][task][metric]
        ours = sorted((s["doc_id"], s[metric.split(",")[0]]) for s in results["samples"][task])
        theirs = sorted((s["doc_id"], s[metric.split(",")[0]]) for s in plain["samples"][task])
        assert ours == theirs
    # the task is one the model can do (it copies), else equal accuracies would say little
    assert written["results"]["copy_mc"]["acc,none"] >= 0.75
    assert written["results"]["needle"]["exact_match,none"] >= 0.5


def test_every_document_has_statistics_and_a_sample_row(evaluated):
    out, _ = evaluated
    samples = pd.read_parquet(out / "samples.parquet")
    stats = pd.read_parquet(out / "statistics.parquet")
    assert sorted(samples.groupby("task")["doc_id"].nunique().items()) == [("copy_mc", LIMIT), ("needle", LIMIT)]
    per_doc = stats.groupby(["task", "doc_id"]).apply(lambda g: len(g[["layer", "head"]].drop_duplicates()))
    assert len(per_doc) == 2 * LIMIT and (per_doc == 2 * 4).all()
    assert stats[["sink", "induction", "entropy"]].notna().all().all()
    mc = samples[samples["task"] == "copy_mc"]
    assert (mc["n_requests"] == 4).all() and (mc["n_tokens"] == 32 + 8 + 8 - 1).all()


def test_layer1_induction_heads_show_the_copying(evaluated):
    out, _ = evaluated
    stats = pd.read_parquet(out / "statistics.parquet")
    heads = (stats.assign(w=stats["induction"] * stats["n_queries"]).groupby(["layer", "head"])[["w", "n_queries"]]
             .sum())
    induction = heads["w"] / heads["n_queries"]
    assert induction.loc[1].max() > 2 * induction.loc[0].max()


def test_summary_and_plots_written(evaluated):
    out, _ = evaluated
    summary = (out / "summary.md").read_text()
    accuracy = json.loads((out / "results.json").read_text())["results"]["needle"]["exact_match,none"]
    if 0 < accuracy < 1:  # both groups present: the comparison table
        assert "## needle: heads whose statistics predict correctness best" in summary
    assert "| copy_mc | acc,none |" in summary and "sample_len" not in summary
    assert (out / "plots" / "length_induction.png").exists()


def test_rerun_resumes_from_committed_requests(evaluated, byte_checkpoint, task_dir, monkeypatch):
    """A second run with the same settings answers every request from DIR/requests, never the model."""
    from lm_eval.models.huggingface import HFLM

    from circuit_stats.evaluation import evaluate

    out, first = evaluated
    before = sorted(p.name for p in (out / "requests").iterdir())

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran for a committed request")

    monkeypatch.setattr(HFLM, "_model_call", no_model)
    monkeypatch.setattr(HFLM, "_model_generate", no_model)
    model, tok = load(byte_checkpoint)
    again = evaluate(model, ["copy_mc", "needle"], tokenizer=tok, out=out, include_path=task_dir, limit=LIMIT)
    assert sorted(p.name for p in (out / "requests").iterdir()) == before
    for task, metric in (("copy_mc", "acc,none"), ("needle", "exact_match,none")):
        assert again["results"][task][metric] == first["results"][task][metric]
