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


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gpt-oss"])
def test_training_gradients_with_score_modifiers(family):
    """Sliding windows, softcapping (Gemma 2) and learned sinks (gpt-oss, whose sinks get a
    gradient too) in the differentiable path match eager attention's gradients."""
    ours, eager = model_pair(family)
    ours.train(), eager.train()
    ids, mask = random_batch(padding="right")
    labels = ids.masked_fill(mask == 0, -100)
    for m in (ours, eager):
        m.zero_grad()
        m(ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, p1), (_, p2) in zip(ours.named_parameters(), eager.named_parameters()):
        if p2.grad is not None:
            torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_outside_a_recording_no_statistics_are_requested(monkeypatch):
    """Outside ``record()`` every layer asks for the output alone (``attention_output``) with the
    padding side inputs of its forward, built once for all layers; never for statistics."""
    import circuit_stats.models.attention as att

    seen = []
    real = att.attention_output
    monkeypatch.setattr(att, "attention_output", lambda *a, **k: seen.append(k) or real(*a, **k))
    monkeypatch.setattr(att, "attention_with_stats", lambda *a, **k: pytest.fail("statistics requested"))
    ours = tiny_model("pythia", layers=3)
    ids, mask = random_batch(padding="left")
    with torch.no_grad():
        ours(ids, attention_mask=mask)
    assert len(seen) == 3 and all(set(k) == {"scale", "side_inputs", "backend"} for k in seen)
    side = seen[0]["side_inputs"]
    assert all(k["side_inputs"] is side for k in seen)  # one per forward (kept alive by `seen`)
    assert side.token_ids is None and torch.equal(side.key_padding_mask, mask.bool())


def test_each_forward_gets_the_padding_of_its_own_mask(backend):
    """The padding side inputs cached for a forward never serve another one: the same mask tensor
    changed in place, another padding, then none, each match eager attention."""
    ours, eager = model_pair("pythia")
    ids, mask = random_batch(padding="left")
    mask = mask.clone()
    with torch.no_grad():
        for change in (None, lambda m: m.copy_(random_batch(padding="right")[1]), lambda m: m.fill_(1)):
            if change is not None:
                change(mask)  # in place: the same tensor object as the previous forward's
            got, want = ours(ids, attention_mask=mask).logits, eager(ids, attention_mask=mask).logits
            real = mask.bool()
            torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)


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


@pytest.mark.parametrize("extra", ["position_bias", "cu_seq_lens_q"])
def test_attention_terms_we_cannot_honour_are_refused(extra):
    from circuit_stats.models.attention import circuit_stats_attention

    module = tiny_model("llama-gqa").model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 16)
    kv = torch.randn(1, 2, 5, 16)
    with pytest.raises(NotImplementedError, match=extra):
        circuit_stats_attention(module, q, kv, kv, None, **{extra: torch.zeros(1)})


def test_score_modifiers_reach_the_kernel(monkeypatch):
    """sliding_window / softcap / s_aux become the kernel's window / softcap / sinks; a window that
    disagrees with the one the mask was built with, or is not an int >= 1, is an error."""
    import circuit_stats.models.attention as att

    seen = []
    real = att.attention_output  # outside record(): the output alone
    monkeypatch.setattr(att, "attention_output", lambda *a, **k: seen.append(k) or real(*a, **k))
    module = tiny_model("llama-gqa").model.layers[0].self_attn
    q, kv = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16)
    sinks = torch.randn(4)
    with torch.no_grad():
        att.circuit_stats_attention(module, q, kv, kv, None, sliding_window=3, softcap=5.0, s_aux=sinks)
    assert seen[-1]["window"] == 3 and seen[-1]["softcap"] == 5.0 and seen[-1]["sinks"] is sinks
    tagged = torch.ones(2, 9, dtype=torch.bool)
    setattr(tagged, att.WINDOW_ATTRIBUTE, 4)
    with torch.no_grad():
        att.circuit_stats_attention(module, q, kv, kv, tagged)  # Qwen2-MoE: the window comes with the mask only
    assert seen[-1]["window"] == 4
    with pytest.raises(ValueError, match="window of 4"):
        att.circuit_stats_attention(module, q, kv, kv, tagged, sliding_window=3)
    with pytest.raises(ValueError, match="sliding_window must be an int >= 1"):
        att.circuit_stats_attention(module, q, kv, kv, None, sliding_window=0)


def test_mask_patterns_other_than_causal_or_sliding_are_refused():
    from transformers.masking_utils import and_masks, causal_mask_function, sliding_window_causal_mask_function

    from circuit_stats.models.attention import circuit_stats_mask, sliding_window_of

    kw = dict(q_length=7, kv_length=7, q_offset=0, kv_offset=0, attention_mask=None)
    got = circuit_stats_mask(2, mask_function=sliding_window_causal_mask_function(3), local_size=3, **kw)
    assert sliding_window_of(got) == 3 and got.shape == (2, 7) and got.all()
    with pytest.raises(NotImplementedError, match="mask pattern"):  # a window other than the one announced
        circuit_stats_mask(2, mask_function=sliding_window_causal_mask_function(2), local_size=3, **kw)
    chunked = and_masks(causal_mask_function, lambda b, h, q, k: q // 4 == k // 4)
    with pytest.raises(NotImplementedError, match="mask pattern"):
        circuit_stats_mask(2, mask_function=chunked, local_size=4, **kw)


def test_mask_function_reads_no_cache_position_when_the_mask_gives_it(monkeypatch):
    """transformers' older mask call (``cache_position`` instead of ``q_offset``): the first query
    position follows from the 2-D padding mask's length (every position seen so far), so
    ``cache_position`` is never read, which would synchronise a GPU every forward. A meta tensor,
    whose values cannot be read, stands for it; without a mask it is read (a CPU tensor here)."""
    import circuit_stats.models.attention as att

    # that transformers' flash_attention_mask took cache_position (this one takes q_length)
    monkeypatch.setattr(att, "flash_attention_mask", lambda batch_size, cache_position, **kw: kw["attention_mask"])
    positions = torch.arange(5, 8, device="meta")  # 3 queries after 5 cached keys
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, :2] = False
    got = att.circuit_stats_mask(2, cache_position=positions, kv_length=8, kv_offset=0, attention_mask=mask)
    assert torch.equal(got, mask) and got.data_ptr() == mask.data_ptr()  # the mask (a view of it: no copy)
    with pytest.raises(NotImplementedError, match="static"):  # a static cache's keys: its whole length
        att.circuit_stats_mask(2, cache_position=positions, kv_length=16, kv_offset=0, attention_mask=mask)
    assert att.circuit_stats_mask(2, cache_position=torch.arange(5, 8), kv_length=8, kv_offset=0,
                                  attention_mask=None) is None
    with pytest.raises(NotImplementedError, match="static"):
        att.circuit_stats_mask(2, cache_position=torch.arange(5, 8), kv_length=16, kv_offset=0, attention_mask=None)
