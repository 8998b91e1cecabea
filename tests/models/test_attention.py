"""models/attention.py: attn_implementation="circuit_stats" (outputs, refusals, loading) on tiny random models."""

import pytest
import torch
from circuit_stats.models import tiny_model
from hf_helpers import FAMILIES, eager_means, model_pair, random_batch
from transformers import AutoModelForCausalLM

import circuit_stats

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)


@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_sdpa(family, padding, backend):
    ours = tiny_model(family, seed=2, initializer_range=0.3)
    sdpa = tiny_model(family, attn_implementation="sdpa", seed=2, initializer_range=0.3)
    ids, mask = random_batch(padding=padding)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = sdpa(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(a[keep], b[keep], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision(family, dtype):
    """In fp16/bf16, ours must be at least about as accurate as HF eager in the same dtype,
    both measured against the float32 model; statistics must match float32 eager ones."""
    ours, eager = model_pair(family, dtype=dtype, seed=8)
    _, eager32 = model_pair(family, dtype=torch.float32, seed=8)
    ids, mask = random_batch(padding="left", seed=9)
    keep = mask.bool()
    with torch.no_grad():
        ref = eager32(ids, attention_mask=mask).logits[keep]
        err_ours = (ours(ids, attention_mask=mask).logits.float()[keep] - ref).abs().max()
        err_eager = (eager(ids, attention_mask=mask).logits.float()[keep] - ref).abs().max()
        with circuit_stats.record(ours, offsets=(1,), entropy=True) as rec:
            ours(ids, attention_mask=mask)
    assert err_ours <= 1.5 * err_eager + 1e-2, f"{err_ours} vs eager {err_eager}"
    want = eager_means(eager32, ids, mask, offsets=(1,), entropy=True)
    for name in want:
        assert not torch.isnan(rec.tensors()[name]).any()
        torch.testing.assert_close(rec.tensors()[name], want[name], atol=3e-2, rtol=3e-2)


def test_training_with_gradients_works():
    ours, eager = model_pair("olmo")
    ours.train(), eager.train()
    # Right padding: with left padding the last pad position's logits would predict the first
    # real token, and eager's uniform fallback on rows with no attendable key differs from ours.
    ids, mask = random_batch(padding="right")
    labels = ids.masked_fill(mask == 0, -100)
    for m in (ours, eager):
        m.zero_grad()
        m(ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, p1), (_, p2) in zip(ours.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-3, msg=name)
    with circuit_stats.record(ours, offsets=(1,)) as rec:
        ours(ids, attention_mask=mask, labels=labels).loss.backward()
    assert torch.isfinite(rec.tensors()["offset_1"]).all()


def test_outside_a_recording_no_statistics_are_requested(monkeypatch):
    import circuit_stats.models.attention as att

    seen = []
    real = att.attention_with_stats
    monkeypatch.setattr(att, "attention_with_stats", lambda *a, **k: seen.append(k) or real(*a, **k))
    ours = tiny_model("pythia")
    with torch.no_grad():
        ours(random_batch()[0])
    assert seen and all(set(k) == {"scale", "key_padding_mask", "backend"} for k in seen)


def test_from_pretrained_local_dir_and_set_attn_implementation(tmp_path):
    src = tiny_model("olmoe", attn_implementation="sdpa", seed=3)
    src.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, revision="main", attn_implementation="circuit_stats")
    assert loaded.config._attn_implementation == "circuit_stats"
    src.set_attn_implementation("circuit_stats")
    ids = random_batch()[0]
    with torch.no_grad(), circuit_stats.record(loaded) as r1:
        loaded(ids)
    with torch.no_grad(), circuit_stats.record(src) as r2:
        src(ids)
    torch.testing.assert_close(r1.tensors()["sink"], r2.tensors()["sink"])


def test_static_cache_is_refused_not_miscomputed():
    ours = tiny_model("pythia")
    ids = random_batch(B=1, N=16)[0]
    with pytest.raises(NotImplementedError, match="dynamic cache"):
        with torch.no_grad():
            ours.generate(ids, max_new_tokens=3, do_sample=False, cache_implementation="static", pad_token_id=1)


@pytest.mark.parametrize("extra", ["sliding_window", "softcap", "s_aux", "position_bias"])
def test_attention_terms_we_cannot_honour_are_refused(extra):
    from circuit_stats.models.attention import circuit_stats_attention

    module = tiny_model("llama-gqa").model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 16)
    kv = torch.randn(1, 2, 5, 16)
    with pytest.raises(NotImplementedError, match=extra):
        circuit_stats_attention(module, q, kv, kv, None, **{extra: torch.zeros(1)})
