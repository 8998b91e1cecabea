"""record(), score_heads() and profile() on a model held by a wrapper (nnsight's LanguageModel):
the same statistics as on the plain transformers model."""

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import circuit_stats
from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS, demo_series_dir
from circuit_stats.models.wrapped import unwrap_model

pytestmark = pytest.mark.hf

PATH = demo_series_dir() / "checkpoint-1600"
TEXT = "The cat sat on the mat. The cat sat on the mat again."


class Holder:
    """Holds a model as ``_module``, as nnsight's LanguageModel does (duck-typed stand-in)."""

    def __init__(self, module, dispatched=True):
        self._module, self.dispatched = module, dispatched


@pytest.fixture(scope="module")
def plain():
    return AutoModelForCausalLM.from_pretrained(PATH, attn_implementation="circuit_stats", dtype=torch.float32)


def recorded(model, forward) -> dict:
    with circuit_stats.record(model, offsets=(1,), token_match=True, entropy=True) as rec:
        forward()
    return rec.tensors()


def test_unwrap_model_finds_the_wrapped_module(plain):
    assert unwrap_model(plain) is plain and unwrap_model(Holder(plain)) is plain
    assert unwrap_model("not a model") == "not a model"
    with pytest.raises(ValueError, match="dispatch=True"):
        unwrap_model(Holder(plain, dispatched=False))
    with pytest.raises(TypeError, match="needs a transformers model, got str"):
        with circuit_stats.record("not a model"):
            pass


def test_record_score_and_profile_accept_a_holder(plain):
    ids = torch.tensor([list(TEXT.encode())])
    want = recorded(plain, lambda: plain(ids))
    got = recorded(Holder(plain), lambda: plain(ids))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    a = circuit_stats.score_heads(Holder(plain), "repeat", progress=False, **DEMO_REPEAT_OPTIONS)
    b = circuit_stats.score_heads(plain, "repeat", progress=False, **DEMO_REPEAT_OPTIONS)
    pd.testing.assert_frame_equal(a, b)
    p = circuit_stats.profile(Holder(plain), [TEXT], tokenizer="bytes", plots=False, progress=False)
    q = circuit_stats.profile(plain, [TEXT], tokenizer="bytes", plots=False, progress=False)
    pd.testing.assert_frame_equal(p, q)


@pytest.mark.filterwarnings("ignore:LanguageModel is deprecated")
def test_nnsight_language_model(plain):
    """record(LanguageModel) inside lm.trace gives the plain model's statistics; the bundled
    checkpoint loads its own (byte-level) tokenizer; score_heads and profile take it too."""
    nnsight = pytest.importorskip("nnsight")
    lm = nnsight.LanguageModel(str(PATH), attn_implementation="circuit_stats", dtype=torch.float32, dispatch=True)
    assert lm.tokenizer(TEXT)["input_ids"] == list(TEXT.encode())

    def trace():
        with lm.trace(TEXT):
            pass

    got = recorded(lm, trace)
    want = recorded(plain, lambda: plain(torch.tensor([list(TEXT.encode())])))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-6)
    a = circuit_stats.score_heads(lm, "natural", tokenizer=lm.tokenizer, texts=[TEXT], progress=False)
    b = circuit_stats.score_heads(plain, "natural", tokenizer="bytes", texts=[TEXT], progress=False)
    np.testing.assert_allclose(a["induction"], b["induction"], atol=1e-6)
    p = circuit_stats.profile(lm, [TEXT], tokenizer=lm.tokenizer, plots=False, progress=False)
    assert p["n_tokens"].iloc[0] == len(TEXT.encode())


class FakeBridge(torch.nn.Module):
    """What TransformerLens 4's TransformerBridge holds: ``original_model`` (the transformers model,
    switched to eager attention) and its own ``cfg``."""

    def __init__(self, model):
        super().__init__()
        self.original_model, self.cfg = model, object()


def test_a_transformerlens_bridge_is_refused_with_the_call_to_use(plain):
    def record(m):
        with circuit_stats.record(m):
            pass

    for call in (record, lambda m: circuit_stats.score_heads(m, "repeat"), unwrap_model):
        with pytest.raises(ValueError, match="TransformerLens FakeBridge.*attn_implementation='circuit_stats'"):
            call(FakeBridge(plain))
