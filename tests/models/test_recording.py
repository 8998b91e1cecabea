"""models/recording.py: record() statistics against eager attention probabilities on tiny random models."""

import pytest
import torch
from circuit_stats.models import tiny_model
from hf_helpers import FAMILIES, eager_means, model_pair, random_batch
from transformers import AutoModelForCausalLM

import circuit_stats

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)


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
    monkeypatch.setattr(att, "attention_with_stats", lambda *a, **k: sides.append(k.get("side_inputs")) or real(*a, **k))
    ours = tiny_model("pythia", layers=3)
    ids = random_batch()[0]
    with torch.no_grad(), circuit_stats.record(ours, token_match=True):
        ours(ids)
        ours(ids)
    assert built == [1, 1], "side inputs (and their value checks) are built once per forward"
    # the objects themselves are kept: an id() of a freed object can be reused by the next forward's
    assert len(sides) == 6 and all(s is sides[0] for s in sides[:3]) and all(s is sides[3] for s in sides[3:])
    assert sides[0] is not sides[3]
    bad = ids.clone()
    bad[0, 0] = -5
    with pytest.raises((ValueError, IndexError)):
        with torch.no_grad(), circuit_stats.record(ours, token_ids=bad):
            ours(ids)
