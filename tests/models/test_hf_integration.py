"""attn_implementation="circuit_stats" on tiny random models of every supported family."""

import pytest
import torch
from circuit_stats.models import set_backend, tiny_model
from hf_helpers import FAMILIES, eager_means, model_pair, random_batch
from transformers import AutoModelForCausalLM

import circuit_stats

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

BACKENDS = ["torch", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    set_backend(request.param)
    yield request.param
    set_backend("auto")


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


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_statistics_match_eager_probabilities(family, backend):
    ours, eager = model_pair(family)
    ids, mask = random_batch(padding="left", seed=3)
    want = eager_means(eager, ids, mask, offsets=(1, 2), token_match=True, entropy=True)
    with torch.no_grad(), circuit_stats.record(ours, offsets=(1, 2), token_match=True, entropy=True) as rec:
        ours(ids, attention_mask=mask)
    got = rec.tensors()
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=f"{family} {name}")
    df = rec.summary()
    assert list(df.columns) == ["layer", "head", "sink", "offset_1", "offset_2", "induction", "duplicate", "entropy"]
    assert len(df) == got["sink"].numel()
    assert got["sink"].std() > 0.01, "heads should differ; the test would be weak otherwise"


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_each_sequence_alone(family, padding, backend):
    ours = tiny_model(family, seed=4, initializer_range=0.3)
    ids, mask = random_batch(padding=padding, seed=5)
    with torch.no_grad(), circuit_stats.record(ours, offsets=(1,), token_match=True, entropy=True, per_sample=True) as rec:
        ours(ids, attention_mask=mask)
    batched = rec.per_sample()
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].bool()][None]
        with torch.no_grad(), circuit_stats.record(ours, offsets=(1,), token_match=True, entropy=True) as one:
            ours(real)
        for name, val in one.tensors().items():
            torch.testing.assert_close(batched[name][b], val, atol=2e-5, rtol=1e-4, msg=f"row {b} {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_matches_sdpa_and_records_every_position(family, backend):
    ours = tiny_model(family, seed=6, initializer_range=0.3)
    sdpa = tiny_model(family, attn_implementation="sdpa", seed=6, initializer_range=0.3)
    ids, mask = random_batch(B=2, N=12, padding="left", seed=7)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=1)
    with torch.no_grad():
        want = sdpa.generate(ids, **kw)
        with circuit_stats.record(ours, offsets=(1,), token_match=True, entropy=True) as rec:
            got = ours.generate(ids, **kw)
    assert torch.equal(got, want)
    # Prefill + 5 decode steps see every query of the final sequence but the last token:
    # the same means as one forward over got[:, :-1].
    full_mask = torch.cat([mask, torch.ones(2, got.shape[1] - ids.shape[1], dtype=mask.dtype)], 1)[:, :-1]
    with torch.no_grad(), circuit_stats.record(ours, offsets=(1,), token_match=True, entropy=True) as once:
        ours(got[:, :-1], attention_mask=full_mask)
    for name, val in once.tensors().items():
        torch.testing.assert_close(rec.tensors()[name], val, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_grad_modes(mode, backend):
    ours, eager = model_pair("pythia")
    ids, mask = random_batch(padding="right")
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx, circuit_stats.record(ours, offsets=(1,)) as rec:
        ours(ids, attention_mask=mask)
    torch.testing.assert_close(rec.tensors()["offset_1"], eager_means(eager, ids, mask, offsets=(1,))["offset_1"])


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


def test_errors_say_what_to_do():
    sdpa = tiny_model("pythia", attn_implementation="sdpa")
    with pytest.raises(ValueError, match="set_attn_implementation"):
        with circuit_stats.record(sdpa):
            pass
    ours = tiny_model("pythia")
    ids = random_batch()[0]
    with pytest.raises(ValueError, match="record"):
        ours(ids, output_attentions=True)
    with circuit_stats.record(ours):
        with pytest.raises(RuntimeError, match="nested"):
            with circuit_stats.record(ours):
                pass
    with pytest.raises(RuntimeError, match="no forward"):
        with circuit_stats.record(ours) as rec:
            pass
        rec.tensors()
    with pytest.raises(RuntimeError, match="per_sample=True"):
        with torch.no_grad(), circuit_stats.record(ours) as rec:
            ours(ids)
        rec.per_sample()
    with pytest.raises(ValueError, match="query_mask must have shape"):
        with torch.no_grad(), circuit_stats.record(ours, query_mask=torch.ones(1, 3, dtype=torch.bool)):
            ours(ids)


def test_device_map_loading(tmp_path):
    """from_pretrained(device_map=...) (accelerate's dispatch hooks) keeps working with record().
    Placement across several GPUs needs hardware this suite does not have."""
    pytest.importorskip("accelerate")
    ours, eager = model_pair("olmo")
    ours.save_pretrained(tmp_path)
    mapped = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="circuit_stats", device_map="cpu")
    ids, mask = random_batch(padding="left")
    with torch.no_grad(), circuit_stats.record(mapped, offsets=(1,), token_match=True) as rec:
        mapped(ids, attention_mask=mask)
    want = eager_means(eager, ids, mask, offsets=(1,), token_match=True)
    for name, val in want.items():
        torch.testing.assert_close(rec.tensors()[name], val, atol=1e-5, rtol=1e-4)


def test_value_checks_run_once_per_forward(monkeypatch):
    """Checks that read tensor values synchronise a GPU: inside record() they run in the first
    layer of each forward only."""
    import circuit_stats.models.attention as att
    from circuit_stats.kernels import SideInputs

    built = []
    real_build = SideInputs.build.__func__
    monkeypatch.setattr(SideInputs, "build", classmethod(lambda cls, **k: built.append(1) or real_build(cls, **k)))
    sides = []
    real = att.attention_with_stats
    monkeypatch.setattr(att, "attention_with_stats", lambda *a, **k: sides.append(id(k.get("side_inputs"))) or real(*a, **k))
    ours = tiny_model("pythia", layers=3)
    ids = random_batch()[0]
    with torch.no_grad(), circuit_stats.record(ours, token_match=True):
        ours(ids)
        ours(ids)
    assert built == [1, 1], "side inputs (and their value checks) are built once per forward"
    assert len(sides) == 6 and len(set(sides[:3])) == 1 and len(set(sides[3:])) == 1 and sides[0] != sides[3]
    bad = ids.clone()
    bad[0, 0] = -5
    with pytest.raises((ValueError, IndexError)):
        with torch.no_grad(), circuit_stats.record(ours, token_ids=bad):
            ours(ids)


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
