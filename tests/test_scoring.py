"""score_heads refuses NaN scores (issue 19): a head of a NaN model is neither classified nor
unclassified, whatever the protocol and however it labels."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import circuit_stats
from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS, demo_series_dir
from circuit_stats.finite import NonFiniteError
from circuit_stats.models import tiny_model

pytestmark = pytest.mark.hf

TEXTS = ["the mill and the river and the bridge, the mill and the river and the bridge again"]
CASES = {
    "repeat": dict(DEMO_REPEAT_OPTIONS),
    "natural": dict(tokenizer="bytes", texts=TEXTS),
    "sink": dict(tokenizer="bytes", texts=TEXTS, seq_len=16),
    "retrieval": dict(tokenizer="bytes", texts=TEXTS, context_lengths=[48], depths=[0.5], n_needles=1, needle_len=8,
                      prefix_len=2),
    "xu2026": dict(n_sequences=2),
}


def nan_layer(model, layer: int):
    with torch.no_grad():
        model.base_model.layers[layer].attention.query_key_value.weight.fill_(float("nan"))
    return model


def model_for(protocol: str):
    if protocol == "xu2026":  # token ids up to 10000
        return tiny_model("pythia", vocab_size=10000)
    return AutoModelForCausalLM.from_pretrained(demo_series_dir() / "checkpoint-1600", dtype=torch.float32,
                                                attn_implementation="circuit_stats")


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_nan_weights_are_refused_not_labelled(protocol):
    model = model_for(protocol)
    clean = circuit_stats.score_heads(model, protocol, progress=False, **CASES[protocol])
    assert "label" in clean.columns  # every protocol labels its heads (report, monitor)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        circuit_stats.score_heads(nan_layer(model, 1), protocol, progress=False, **CASES[protocol])
