"""The worked example's lm-eval tasks, built from the bundled sample corpus for the bundled
byte-level demo model (``copy_mc``: multiple choice; ``needle``: generation).

    write_demo_tasks("tasks")   # tasks/copy_mc.yaml + .jsonl, tasks/needle.yaml + .jsonl
    circuit_stats.evaluate(model, ["copy_mc"], tokenizer=tok, out="eval-out", include_path="tasks")
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Union

from ..profiling.corpus import sample_corpus_path

SPAN, SHOWN, ANSWER = 32, 8, 8  # copy task: a 32-byte span, repeated; 8 bytes shown, 8 asked for


def corpus_spans(n: int, length: int, seed: int) -> list[str]:
    """``n`` distinct printable-ASCII spans of ``length`` characters from the bundled sample corpus."""
    text = " ".join(json.loads(line)["text"] for line in sample_corpus_path().read_text().splitlines() if line.strip())
    text = "".join(c for c in text if 32 <= ord(c) < 127)
    rng = random.Random(seed)
    spans = set()
    while len(spans) < n:
        start = rng.randrange(len(text) - length)
        spans.add(text[start:start + length])
    return sorted(spans)


def write_task(folder: Path, name: str, rows: list[dict], yaml_body: str) -> None:
    """``folder/name.jsonl`` (the rows) and ``folder/name.yaml`` (lm-eval's ``dataset_path: json``)."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                         f"    test: {data}\ntest_split: test\n{yaml_body}")


def write_demo_tasks(folder: Union[str, Path]) -> Path:
    """Write ``copy_mc`` (24 documents: context = a 32-byte corpus span + its first 8 bytes;
    choices = the span's next 8 bytes (label) and 3 other spans' bytes) and ``needle`` (12
    documents: ``k=<4 bytes>;`` in 40 bytes of corpus text, the prompt ends with ``k=``; exact match
    of up to 4 greedy bytes) into ``folder`` (created), and return it for ``include_path``."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    spans = corpus_spans(24, SPAN, seed=0)
    rng = random.Random(1)
    rows = []
    for i, span in enumerate(spans):
        answer = span[SHOWN:SHOWN + ANSWER]
        others = [s[SHOWN:SHOWN + ANSWER] for s in rng.sample(spans[:i] + spans[i + 1:], 3)]
        label = rng.randrange(4)
        choices = others[:label] + [answer] + others[label:]
        rows.append({"context": span + span[:SHOWN], "choices": choices, "label": label})
    write_task(folder, "copy_mc", rows, "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\n"
               "doc_to_target: label\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    hay = corpus_spans(12, 40, seed=2)
    needles = corpus_spans(12, 4, seed=3)
    rows = [{"prompt": f"{h[:20]}k={n};{h[20:]}k=", "answer": n} for h, n in zip(hay, needles)]
    write_task(folder, "needle", rows, "output_type: generate_until\ndoc_to_text: prompt\ndoc_to_target: answer\n"
               "target_delimiter: ''\ngeneration_kwargs:\n  until: [';']\n  max_gen_toks: 4\n  do_sample: false\n"
               "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return folder
