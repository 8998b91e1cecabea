"""Documents of very different lengths do not pad each other: a document's statistics evaluated
next to a 30x longer one equal those of the document evaluated alone (multiple choice, whose
requests lm-eval right-pads in a batch, and generation, which it left-pads)."""

import pandas as pd
import pytest
from eval_fixtures import byte_checkpoint  # noqa: F401 (a fixture)

pytest.importorskip("lm_eval")

STATS = ["sink", "previous_token", "induction", "entropy"]
SHORT, LONG = "abcab", "the mill by the river, the mill by the bridge; " * 6  # 5 and 288 bytes


def write_tasks(folder):
    """``mixed_*`` (the short document, then the long one), ``short_*`` and ``long_*`` (one each),
    as multiple choice (``*_mc``) and generation (``*_gen``) tasks."""
    from circuit_stats.evaluation.demo_tasks import write_task

    mc = ("output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: label\n"
          "target_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    gen = ("output_type: generate_until\ndoc_to_text: context\ndoc_to_target: answer\ntarget_delimiter: ''\n"
           "generation_kwargs:\n  until: [';']\n  max_gen_toks: 3\n  do_sample: false\n"
           "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    rows = {"short": [{"context": SHORT, "choices": ["cab", "xyz"], "label": 0, "answer": "cab"}],
            "long": [{"context": LONG, "choices": ["the", "qrs"], "label": 0, "answer": "the"}]}
    rows["mixed"] = rows["short"] + rows["long"]
    folder.mkdir()
    for name, docs in rows.items():
        write_task(folder, f"{name}_mc", docs, mc)
        write_task(folder, f"{name}_gen", docs, gen)
    return folder


def test_a_short_document_next_to_a_long_one_equals_itself_alone(byte_checkpoint, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuit_stats.evaluation import evaluate

    tasks = write_tasks(tmp_path / "tasks")
    model = AutoModelForCausalLM.from_pretrained(byte_checkpoint, dtype=torch.float32,
                                                 attn_implementation="circuit_stats").eval()
    tok = AutoTokenizer.from_pretrained(byte_checkpoint)

    def statistics(group):
        out = tmp_path / group
        evaluate(model, [f"{group}_mc", f"{group}_gen"], tokenizer=tok, out=out, include_path=tasks, statistics=STATS,
                 position_bins=[0, 4, 32, float("inf")], plots=False)
        df = pd.read_parquet(out / "statistics.parquet")
        return df.assign(task=df["task"].str.replace(f"{group}_", "", regex=False))

    mixed, short, long = statistics("mixed"), statistics("short"), statistics("long")
    for kind in ("mc", "gen"):
        alone = {0: short[short["task"] == kind], 1: long[long["task"] == kind].assign(doc_id=1)}
        queries = {}
        for doc_id, solo in alone.items():
            together = mixed[(mixed["task"] == kind) & (mixed["doc_id"] == doc_id)]
            pd.testing.assert_frame_equal(together.reset_index(drop=True), solo.reset_index(drop=True),
                                          check_exact=False, atol=1e-6, rtol=1e-5)
            queries[doc_id] = together.groupby(["layer", "head"])["n_queries"].sum().max()
        assert queries[1] > 30 * queries[0], queries  # the inputs differ in length as the test needs
