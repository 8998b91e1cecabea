"""On the bundled trained model, `repeat` and `natural` find exactly the induction heads that
formed. Ground truth comes from ablation, independent of either protocol: a head belongs to the
induction circuit if zeroing its output destroys in-context copying; in a 2-layer model the
induction heads are those of layer 1 (they compose with a previous-token head below them)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import circuit_stats
from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS, demo_series_dir
from circuit_stats.demo.train import synthetic_batch

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)


def load(step: int):
    return AutoModelForCausalLM.from_pretrained(demo_series_dir() / f"checkpoint-{step}",
                                                attn_implementation="circuit_stats", dtype=torch.float32)


def copy_loss(model, ids):
    with torch.no_grad():
        logits = model(ids).logits
    half = ids.shape[1] // 2  # every row has repeated by then (period <= 32)
    return torch.nn.functional.cross_entropy(logits[:, half:-1].reshape(-1, logits.shape[-1]), ids[:, half + 1 :].reshape(-1)).item()


@pytest.fixture(scope="module")
def ablation_induction_heads():
    model = load(1600)
    ids = synthetic_batch(torch.Generator().manual_seed(123), batch=32)
    base = copy_loss(model, ids)
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    found = set()
    last = cfg.num_hidden_layers - 1
    for h in range(cfg.num_attention_heads):
        m = load(1600)
        with torch.no_grad():
            m.gpt_neox.layers[last].attention.dense.weight[:, h * d : (h + 1) * d] = 0
        if copy_loss(m, ids) > 10 * base:
            found.add((last, h))
    assert base < 0.2 and found, "the shipped model should copy, through some layer-1 heads"
    return found


def induction_set(df):
    return {(int(r.layer), int(r.head)) for r in df.itertuples() if r.label == "induction"}


def test_repeat_finds_exactly_the_induction_heads(ablation_induction_heads):
    df = circuit_stats.score_heads(load(1600), "repeat", progress=False, **DEMO_REPEAT_OPTIONS)
    assert induction_set(df) == ablation_induction_heads


def test_natural_finds_exactly_the_induction_heads(ablation_induction_heads):
    df = circuit_stats.score_heads(load(1600), "natural", tokenizer="bytes", progress=False)
    assert induction_set(df) == ablation_induction_heads


def test_no_induction_heads_before_training():
    for protocol, opts in (("repeat", DEMO_REPEAT_OPTIONS), ("natural", {"tokenizer": "bytes"})):
        assert not induction_set(circuit_stats.score_heads(load(0), protocol, progress=False, **opts))
