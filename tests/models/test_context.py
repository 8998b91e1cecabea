"""Context limits: refused past a learned position table (before any forward), a warning past a
rotary model's trained context; the same helper for protocols and profiles."""

import warnings
from types import SimpleNamespace

import pytest
import torch

import circuit_stats
from circuit_stats.models import tiny_model
from circuit_stats.models.context import check_context, context_limit, has_learned_positions


def counting_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_learned_positions_refuse_a_longer_repeat_before_any_forward(family):
    model = tiny_model(family, n_positions=64) if family == "gpt2" else tiny_model(family, max_position_embeddings=64)
    assert context_limit(model) == 64 and has_learned_positions(model)
    calls = counting_forwards(model)
    with pytest.raises(ValueError, match=r"protocol 'repeat' needs 65 positions, but .* learned position embeddings "
                                         r"for 64 only"):
        circuit_stats.score_heads(model, "repeat", n_sequences=2, seq_len=32, bos_token_id=0, progress=False)
    assert calls == []
    circuit_stats.score_heads(model, "repeat", n_sequences=2, seq_len=32, progress=False)  # 64 tokens: fits


def test_natural_text_longer_than_the_context_is_refused_before_any_forward():
    model = tiny_model("gpt2", n_positions=64)
    calls = counting_forwards(model)
    texts = [list(range(1, 30)), list(range(1, 90))]  # the second is too long
    with pytest.raises(ValueError, match="protocol 'natural' needs 89 positions"):
        circuit_stats.score_heads(model, "natural", texts=texts, progress=False)
    assert calls == []


def test_cache_extending_forwards_are_checked_too():
    model = tiny_model("gpt2", n_positions=16)
    from circuit_stats.models.context import context_guard

    ids = torch.randint(1, 50, (1, 10))
    with context_guard(model, "decode"), torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        with pytest.raises(ValueError, match="decode needs 20 positions"):
            model(input_ids=ids, past_key_values=out.past_key_values, use_cache=True)


def test_rotary_models_run_past_their_context_with_a_warning():
    model = tiny_model("llama-gqa")
    model.config.max_position_embeddings = 32  # rotary: nothing else depends on it
    assert context_limit(model) == 32 and not has_learned_positions(model)
    with pytest.warns(UserWarning, match="protocol 'repeat' needs 48 positions, past the 32"):
        circuit_stats.score_heads(model, "repeat", n_sequences=2, seq_len=24, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        circuit_stats.score_heads(model, "repeat", n_sequences=2, seq_len=16, progress=False)  # 32: no warning


def test_profile_refuses_max_tokens_past_learned_positions_and_truncates_by_default():
    model = tiny_model("gpt2", n_positions=32)
    calls = counting_forwards(model)
    with pytest.raises(ValueError, match="max_tokens=40 needs 40 positions"):
        circuit_stats.profile(model, [list(range(1, 50))], max_tokens=40, progress=False, statistics=["sink"])
    assert calls == []
    df = circuit_stats.profile(model, [list(range(1, 50))], progress=False, statistics=["sink"])
    assert set(df["n_tokens"]) == {32}  # cut at the model's context


def test_check_context_without_a_stated_limit_does_nothing():
    model = tiny_model("gpt2", n_positions=32)
    check_context(model, 32, "x")
    with pytest.raises(ValueError):
        check_context(model, 33, "x")
    no_limit = torch.nn.Linear(2, 2)
    no_limit.config = SimpleNamespace(vocab_size=10)  # e.g. ALiBi models state no position count
    assert context_limit(no_limit) is None
    check_context(no_limit, 10**6, "x")


def test_retrieval_is_refused_before_any_forward_when_its_longest_trial_does_not_fit():
    model = tiny_model("gpt2", n_positions=64, vocab_size=256)
    calls = counting_forwards(model)
    options = dict(context_lengths=[40, 60], depths=[0.5], n_needles=1, needle_len=8, prefix_len=2, vocab_range=[200, 256])
    # 60 prompt tokens + 6 decoded (5 fed back): 65 positions
    with pytest.raises(ValueError, match="protocol 'retrieval' needs 65 positions"):
        circuit_stats.score_heads(model, "retrieval", texts=[list(range(1, 100))], progress=False, **options)
    assert calls == []
    options["context_lengths"] = [40, 59]  # 64 positions: fits
    circuit_stats.score_heads(model, "retrieval", texts=[list(range(1, 100))], progress=False, **options)
