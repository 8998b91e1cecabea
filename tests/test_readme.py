"""Every ```python block of README.md runs as written on the bundled demo model.

The README says that its snippets continue from the drop-in snippet (the first block: it loads
the bundled model and defines ``model``, ``tok``, ``input_ids``); so each block runs in a fresh
namespace after that one, in a temporary working directory. A block whose first line is
``# needs: <what>`` runs only where that is available (``cuda``, an installed package such as
``nnsight``; ``hub``: never here) and is skipped with that reason elsewhere.
"""

import importlib.util
import linecache
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.hf


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = python_blocks()
SETUP = BLOCKS[0][1]


def available(need: str) -> bool:
    """``# needs: cuda`` (a GPU), ``# needs: <module>`` (an installed package); anything else (the
    hub) is not available here."""
    if need == "cuda":
        return torch.cuda.is_available()
    return need != "hub" and importlib.util.find_spec(need) is not None


def execute(code: str, where: str, namespace: dict) -> dict:
    """Run ``code`` as the file ``where`` (registered in ``linecache``: nnsight reads the source
    of a ``with lm.trace(...)`` block back)."""
    linecache.cache[where] = (len(code), None, code.splitlines(True), where)
    exec(compile(code, where, "exec"), namespace)
    return namespace


def run_block(code: str, where: str) -> dict:
    return execute(code, where, {"__name__": "__readme__"})


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_its_snippets():
    assert len(BLOCKS) >= 6
    assert "demo_series_dir" in SETUP and "model = " in SETUP and "tok = " in SETUP


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_snippet_runs(line, code, in_tmp):
    needs = re.match(r"# needs: (\w+)", code)
    if needs and not available(needs.group(1)):
        pytest.skip(f"README.md:{line} needs {needs.group(1)}")
    ns = {"__name__": "__readme__"} if code == SETUP else run_block(SETUP, "README.md:setup")
    execute(code, f"README.md:{line}", ns)


def test_readme_setup_block_scores_the_padded_batch():
    ns = run_block(SETUP, "README.md:setup")
    summary = ns["rec"].summary()
    assert len(summary) == 8 and summary[["sink", "induction", "entropy"]].notna().all().all()
    assert ns["attention_mask"][1].sum() == len("A shorter text.")


def test_readme_repeat_numbers_on_the_demo_model():
    """The README's figures for the demo's four induction heads at checkpoint-1600 with the
    snippet's repeat options: induction_offset 0.91-0.94."""
    import circuit_stats
    from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS

    ns = run_block(SETUP, "README.md:setup")
    assert DEMO_REPEAT_OPTIONS == {"vocab_range": (32, 127), "seq_len": 32, "n_sequences": 32}
    df = circuit_stats.score_heads(ns["model"], "repeat", progress=False, **DEMO_REPEAT_OPTIONS)
    layer1 = df[df["layer"] == 1]
    assert layer1["induction_offset"].round(2).between(0.91, 0.94).all(), layer1["induction_offset"].tolist()
    assert (layer1["label"] == "induction").all()
    default = circuit_stats.score_heads(ns["model"], "repeat", progress=False)
    assert not default["is_induction"].any()  # the README: with the defaults repeat finds no heads
