"""models/recording.py: a forward that raises inside record(), token_ids that do not fit the
sequence, and boolean options that are not bools."""

import re

import pytest
import torch
from circuit_stats.models import tiny_model
from circuit_stats.profiling.prefill import cache_keyword
from hf_helpers import random_batch
from transformers import DynamicCache

import circuit_stats

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

STATS = dict(offsets=(1,), token_match=True, entropy=True, per_sample=True)


def fail_once_in_layer(model, layer: int):
    """Make ``layer``'s attention raise on its next call (after the earlier layers recorded)."""
    attn = model.gpt_neox.layers[layer].attention
    real = attn.forward

    def forward(*args, **kwargs):
        attn.forward = real
        raise RuntimeError("simulated failure in a later layer")

    attn.forward = forward


@torch.no_grad()
def test_a_forward_that_raises_inside_the_block_is_rolled_back():
    """A user who catches a failing forward inside the block and keeps recording gets exactly the
    statistics of the forwards that finished, every layer over the same queries."""
    model = tiny_model("pythia")
    good, _ = random_batch(B=2, N=21, seed=1)
    bad, _ = random_batch(B=3, N=17, seed=2)
    with circuit_stats.record(model, **STATS) as clean:
        model(good)
    with circuit_stats.record(model, **STATS) as rec:
        fail_once_in_layer(model, model.config.num_hidden_layers - 1)
        with pytest.raises(RuntimeError, match="simulated"):
            model(bad)
        with pytest.warns(UserWarning, match="raised before it finished"):
            model(good)
    counts = [rec._counts[layer]["sink"] for layer in range(model.config.num_hidden_layers)]
    assert all(torch.equal(c, counts[0]) for c in counts), counts
    for name, want in clean.tensors().items():
        torch.testing.assert_close(rec.tensors()[name], want, msg=name)
    assert rec.per_sample()["sink"].shape[0] == good.shape[0]


@torch.no_grad()
def test_a_failed_last_forward_is_discarded_before_results():
    model = tiny_model("pythia")
    good, _ = random_batch(B=2, N=21, seed=1)
    with circuit_stats.record(model, **STATS) as clean:
        model(good)
    with circuit_stats.record(model, **STATS) as rec:
        model(good)
        fail_once_in_layer(model, model.config.num_hidden_layers - 1)
        with pytest.raises(RuntimeError, match="simulated"):
            model(good[:1, :9])
    with pytest.warns(UserWarning, match="discarded"):
        got = rec.tensors()
    for name, want in clean.tensors().items():
        torch.testing.assert_close(got[name], want, msg=name)
    with circuit_stats.record(model) as rec:
        fail_once_in_layer(model, model.config.num_hidden_layers - 1)
        with pytest.raises(RuntimeError, match="simulated"):
            model(good)
    with pytest.warns(UserWarning, match="discarded"), pytest.raises(RuntimeError, match="no forward"):
        rec.tensors()


@torch.no_grad()
def test_token_ids_must_fit_the_sequence():
    model = tiny_model("pythia")
    ids, _ = random_batch(B=2, N=21, seed=1)
    longer = torch.cat([ids, ids[:, :5]], 1)
    for bad in (longer, ids[:, 1:], ids[:1]):
        with pytest.raises(ValueError, match=r"token_ids .*need shape \(2, 21\), got " + re.escape(str(tuple(bad.shape)))):
            with circuit_stats.record(model, token_ids=bad):
                model(ids)
    with circuit_stats.record(model, token_ids=ids) as rec:  # the right length is taken as is
        model(ids)
    with circuit_stats.record(model, token_match=True) as want:
        model(ids)
    torch.testing.assert_close(rec.tensors()["induction"], want.tensors()["induction"])


@torch.no_grad()
def test_token_ids_of_a_cached_sequence_cover_every_position_so_far():
    """Chunked prefill: the ids given for the whole sequence do not fit the first chunk (they were
    cut to its last keys before, silently); ids of the sequence so far do, chunk after chunk."""
    model = tiny_model("pythia")
    ids, _ = random_batch(B=2, N=21, seed=1)
    with pytest.raises(ValueError, match=r"token_ids .*need shape \(2, 12\), got \(2, 21\)"):
        with circuit_stats.record(model, token_ids=ids):
            model(ids[:, :12], use_cache=True, **{cache_keyword(model): DynamicCache()})
    kw = {cache_keyword(model): DynamicCache()}
    with circuit_stats.record(model, token_ids=ids[:, :12]) as rec:
        model(ids[:, :12], use_cache=True, **kw)
        rec.set_inputs(token_ids=ids)
        model(ids[:, 12:], use_cache=True, **kw)
    with circuit_stats.record(model, token_match=True) as want:
        model(ids)
    torch.testing.assert_close(rec.tensors()["induction"], want.tensors()["induction"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("option", ["entropy", "token_match", "per_sample", "distance", "top1"])
@pytest.mark.parametrize("value", ["false", 1, None])
def test_boolean_options_must_be_bools(option, value):
    model = tiny_model("pythia")
    with pytest.raises(TypeError, match=f"{option} must be a bool"):
        with circuit_stats.record(model, **{option: value}):
            pass
