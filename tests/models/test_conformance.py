"""Conformance: attn_implementation="circuit_stats" on a tiny random model of every decoder family.

One model per family (models/families.py keeps each family's attention quirks: GQA/MQA, partial
rotary, qk-norm, clip_qkv, parallel residual, sliding-window and alternating local/global layers,
softcapping, learned sinks, experts), switched between implementations with
``set_attn_implementation`` so that every comparison uses the same weights:

* logits (inside and outside ``record()``) against eager attention on a left-padded batch;
* every ``record()`` statistic against the float64 definitions applied to eager probabilities;
* a right-padded batch against each sequence alone;
* greedy ``generate()`` against sdpa (eager where the family has no sdpa), with and without
  ``record()``, and the statistics recorded during generation against one forward.

A family that needs a score modifier the installed kernel does not take yet, or whose attention
does not go through transformers' AttentionInterface, must be refused with an error saying why
and what to use instead (the README lists them).
"""

import pytest
import torch
from circuit_stats.models import set_backend
from circuit_stats.models.attention import KERNEL_MODIFIERS
from circuit_stats.models.families import (
    TINY_CONFIGS,
    attention_interface_refusal,
    family_config,
    missing_config_class,
)
from hf_helpers import eager_means, random_batch
from transformers import AutoModelForCausalLM

import circuit_stats

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

# Kernel arguments each family's attention needs beyond plain causal attention.
NEEDS = {
    "olmo3": {"window"}, "mistral": {"window"}, "qwen2-window": {"window"}, "qwen2-moe-window": {"window"},
    "gemma2": {"window", "softcap"}, "gemma3": {"window"}, "phi3": {"window"}, "starcoder2": {"window"},
    "gpt-oss": {"window", "sinks"},
}
FAMILIES = list(TINY_CONFIGS)
# Families also run through the Triton kernel (under the interpreter on CPU): a small subset.
TRITON_FAMILIES = ["gemma", "gemma2", "gpt-oss"]  # MQA, D=16; window + softcap; window + learned sinks
STATS = dict(offsets=(1, 2), token_match=True, entropy=True)
_MODELS: dict = {}


def tiny(family: str) -> torch.nn.Module:
    """The family's tiny model (built once per session; tests set the implementation they use)."""
    missing = missing_config_class(family)
    if missing:
        pytest.skip(f"transformers has no {missing}")
    if family not in _MODELS:
        torch.manual_seed(11)
        # A large initializer_range makes attention peaky, so that statistics differ between heads.
        config = family_config(family, initializer_range=0.3)
        _MODELS[family] = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    return _MODELS[family]


def use(model: torch.nn.Module, implementation: str) -> torch.nn.Module:
    model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == implementation
    return model


def refusal(family: str, model: torch.nn.Module):
    """(exception type, message pattern) this family must be refused with, or None."""
    if attention_interface_refusal(model):
        return NotImplementedError, "AttentionInterface"
    lacking = NEEDS.get(family, set()) - KERNEL_MODIFIERS
    if lacking:
        return NotImplementedError, "kernel's '(" + "|".join(sorted(lacking)) + ")' argument"
    return None


def supported(family: str) -> torch.nn.Module:
    model = tiny(family)
    if refusal(family, model):
        pytest.skip(f"{family} is refused (test_refused_families_say_why_and_what_to_use)")
    return model


@pytest.fixture
def backend(request):
    set_backend(request.param)
    yield request.param
    set_backend("auto")


def with_backends(families):
    return [pytest.param(f, "torch", id=f"{f}-torch") for f in families] + [
        pytest.param(f, "triton", id=f"{f}-triton") for f in TRITON_FAMILIES if f in families]


@pytest.mark.parametrize("family, backend", with_backends(FAMILIES), indirect=["backend"])
def test_logits_and_statistics_match_eager(family, backend):
    model = supported(family)
    ids, mask = random_batch(padding="left", seed=3)
    has_sinks = "sinks" in NEEDS.get(family, ())
    want = eager_means(use(model, "eager"), ids, mask, learned_sink=has_sinks, **STATS)
    with torch.no_grad():
        want_logits = model(ids, attention_mask=mask).logits
        use(model, "circuit_stats")
        plain = model(ids, attention_mask=mask).logits
        with circuit_stats.record(model, **STATS) as rec:
            recorded = model(ids, attention_mask=mask).logits
    keep = mask.bool()
    for got in (plain, recorded):
        torch.testing.assert_close(got[keep], want_logits[keep], atol=1e-4, rtol=1e-4, msg=family)
    got = rec.tensors()
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=2e-5, rtol=1e-4, msg=f"{family} {name}")
    assert got["sink"].std() > 0.01, "heads should differ; the test would be weak otherwise"
    if has_sinks:
        assert got["learned_sink"].min() > 1e-3, "the learned sinks should absorb some mass"


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_each_sequence_alone(family):
    model = use(supported(family), "circuit_stats")
    ids, mask = random_batch(padding="right", seed=5)
    stats = dict(offsets=(1,), token_match=True, entropy=True)
    with torch.no_grad(), circuit_stats.record(model, per_sample=True, **stats) as rec:
        model(ids, attention_mask=mask)
    batched = rec.per_sample()
    for b in range(ids.shape[0]):
        with torch.no_grad(), circuit_stats.record(model, **stats) as one:
            model(ids[b][mask[b].bool()][None])
        for name, val in one.tensors().items():
            torch.testing.assert_close(batched[name][b], val, atol=2e-5, rtol=1e-4, msg=f"{family} row {b} {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_matches_sdpa_with_and_without_record(family):
    model = supported(family)
    ids, mask = random_batch(B=2, N=12, padding="left", seed=7)
    kw = dict(attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=1)
    try:
        reference = use(model, "sdpa")
    except ValueError:  # no sdpa for this family (gpt-oss): its eager attention is the reference
        reference = use(model, "eager")
    stats = dict(offsets=(1,), token_match=True, entropy=True)
    with torch.no_grad():
        want = reference.generate(ids, **kw)
        use(model, "circuit_stats")
        plain = model.generate(ids, **kw)
        with circuit_stats.record(model, **stats) as rec:
            recorded = model.generate(ids, **kw)
    assert torch.equal(plain, want) and torch.equal(recorded, want)
    # Prefill + 3 decode steps see every query of the final sequence but the last token: the same
    # means as one forward over it. The decode steps run past the sliding window (6 tokens), where
    # transformers' sliding-window cache drops keys. Positions as generate() derives them from the
    # mask (families with learned absolute positions, e.g. GPT-2, do not do it in a plain forward).
    full_mask = torch.cat([mask, torch.ones(2, want.shape[1] - ids.shape[1], dtype=mask.dtype)], 1)[:, :-1]
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
    with torch.no_grad(), circuit_stats.record(model, **stats) as once:
        model(want[:, :-1], attention_mask=full_mask, position_ids=positions)
    for name, val in once.tensors().items():
        torch.testing.assert_close(rec.tensors()[name], val, atol=2e-5, rtol=1e-4, msg=f"{family} {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_refused_families_say_why_and_what_to_use(family):
    model = tiny(family)
    refused = refusal(family, model)
    if refused is None:
        pytest.skip(f"{family} is supported")
    error, pattern = refused
    ids = random_batch(B=2, N=16)[0]
    if attention_interface_refusal(model):
        use(model, "eager")
        model.set_attn_implementation("circuit_stats")  # transformers only logs a warning
        with pytest.raises(error, match=pattern) as info:
            with circuit_stats.record(model):
                pass
        with pytest.raises(KeyError, match="circuit_stats"):
            AutoModelForCausalLM.from_config(model.config, attn_implementation="circuit_stats")
    else:
        with pytest.raises(error, match=pattern) as info, torch.no_grad():
            use(model, "circuit_stats")(ids)
    assert "eager" in str(info.value) or "sdpa" in str(info.value), "the error must say what to use instead"
