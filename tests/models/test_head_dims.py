"""Tiny models whose head dims are not powers of two: GPT-NeoX with D=80 (as Pythia-2.8B) and
Llama with GQA and D=40, on both backends, against SDPA logits and eager-attention statistics."""

import pytest
import torch
from circuit_stats.models import set_backend, tiny_model
from hf_helpers import eager_means, model_pair, random_batch

import circuit_stats

pytestmark = pytest.mark.hf

# family -> config overrides giving the head dim
MODELS = {
    "pythia-D80": ("pythia", dict(hidden=160, heads=2)),
    "llama-gqa-D40": ("llama-gqa", dict(hidden=160, heads=4)),
}


@pytest.fixture(params=["torch", "triton"])
def backend(request):
    set_backend(request.param)
    yield request.param
    set_backend("auto")


@pytest.mark.parametrize("name", list(MODELS))
def test_odd_head_dim_models_match_sdpa_and_eager(name, backend):
    family, kw = MODELS[name]
    ours, eager = model_pair(family, seed=3, **kw)
    head_dim = ours.config.hidden_size // ours.config.num_attention_heads
    assert head_dim in (80, 40)
    sdpa = tiny_model(family, attn_implementation="sdpa", seed=3, initializer_range=0.3, **kw)
    sdpa.load_state_dict(ours.state_dict())
    ids, mask = random_batch(B=2, N=23, padding="left", seed=4)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = sdpa(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(a[keep], b[keep], atol=2e-5, rtol=1e-4)

    want = eager_means(eager, ids, mask, offsets=(1,), token_match=True, entropy=True)
    with torch.no_grad(), circuit_stats.record(ours, offsets=(1,), token_match=True, entropy=True) as rec:
        ours(ids, attention_mask=mask)
    got = rec.tensors()
    assert set(got) == set(want)
    for stat in want:
        torch.testing.assert_close(got[stat], want[stat], atol=1e-5, rtol=1e-4, msg=f"{name} {backend} {stat}")
