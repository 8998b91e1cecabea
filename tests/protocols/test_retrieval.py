"""The retrieval-head protocol (Wu et al. 2024) on the bundled demo model, against an eager oracle."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import circuit_stats
from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS, demo_series_dir
from circuit_stats.protocols.retrieval import build_trials, haystack_tokens, needle_candidates, retrieval_hits

pytestmark = pytest.mark.hf

SHORT = dict(context_lengths=[64, 96], depths=[0.1, 0.5, 0.9], n_needles=2, needle_len=16, prefix_len=4)


def load(step: int, attn: str = "circuit_stats"):
    return AutoModelForCausalLM.from_pretrained(demo_series_dir() / f"checkpoint-{step}", attn_implementation=attn,
                                                dtype=torch.float32)


def heads(df, column):
    return {(int(r.layer), int(r.head)) for r in df.itertuples() if getattr(r, column)}


def test_retrieval_heads_are_the_induction_heads():
    model = load(1600)
    df = circuit_stats.score_heads(model, "retrieval", tokenizer="bytes", progress=False, **SHORT)
    induction = circuit_stats.score_heads(model, "repeat", progress=False, **DEMO_REPEAT_OPTIONS)
    assert df.attrs["settings"]["n_copied"] >= 10, "the demo model copies (almost) every needle at these lengths"
    assert heads(df, "is_retrieval") == {(int(r.layer), int(r.head)) for r in induction.itertuples()
                                         if r.label == "induction"}
    assert df.loc[df["layer"] == 1, "retrieval_score"].min() > 0.8
    assert df.loc[df["layer"] == 0, "retrieval_score"].max() < 0.1


def test_untrained_model_has_no_retrieval_heads():
    df = circuit_stats.score_heads(load(0), "retrieval", tokenizer="bytes", progress=False,
                                   **dict(SHORT, context_lengths=[64]))
    assert df.attrs["settings"]["n_copied"] == 0
    assert df["retrieval_score"].isna().all() and not df["is_retrieval"].any()
    assert (df["retrieval_score_all_trials"] < 0.2).all()


@torch.no_grad()
def eager_hits(eager, prompts, spans, n_steps):
    """Oracle: no cache; every step reruns the whole sequence with output_attentions=True and
    takes the argmax of the last query's materialised attention row."""
    seq = prompts.clone()
    T = prompts.shape[0]
    L, H = eager.config.num_hidden_layers, eager.config.num_attention_heads
    hits = torch.zeros(T, L, H, dtype=torch.long)
    generated = []
    for _ in range(n_steps):
        out = eager(seq, output_attentions=True)
        token = out.logits[:, -1].argmax(-1)
        for layer, att in enumerate(out.attentions):
            top = att[:, :, -1].argmax(-1)  # [T, H]
            for t in range(T):
                for h in range(H):
                    k = int(top[t, h])
                    if spans[t, 0] <= k < spans[t, 1] and int(prompts[t, k]) == int(token[t]):
                        hits[t, layer, h] += 1
        generated.append(token)
        seq = torch.cat([seq, token[:, None]], 1)
    return hits, torch.stack(generated, 1)


def test_hits_match_an_eager_oracle():
    ours, eager = load(1600), load(1600, "eager")
    hay = haystack_tokens(ours, None, "bytes")
    prompts, spans, _ = build_trials(hay, 80, [0.0, 0.4, 0.8, 1.0], 1, 12, 3, needle_candidates(hay, 256, None),
                                     seed=5, bos_token_id=None)
    got_hits, got_gen = retrieval_hits(ours, prompts[:, :-1], spans, n_steps=9, chunk_size=16)
    want_hits, want_gen = eager_hits(eager, prompts[:, :-1], spans, n_steps=9)
    assert torch.equal(got_gen, want_gen)
    assert torch.equal(got_hits, want_hits)
    assert want_hits.sum() > 0 and (want_hits < 9).any(), "some hits and some misses, or the test is weak"


def test_trials_put_the_needle_where_the_spans_say():
    model = load(1600)
    hay = haystack_tokens(model, ["the quick brown fox"], "bytes")
    cand = needle_candidates(hay, 256, None)
    prompts, spans, needles = build_trials(hay, 50, [0.0, 0.5, 1.0], 2, 8, 3, cand, seed=1, bos_token_id=0)
    assert prompts.shape == (6, 50) and (prompts[:, 0] == 0).all()
    for p, (a, b), n in zip(prompts, spans.tolist(), needles):
        assert torch.equal(p[a:b], n) and torch.equal(p[-3:], n[:3])
        assert not set(n.tolist()) & set(hay) and len(set(n.tolist())) == 8
    assert spans[0, 0] == 1 and spans[2, 1] == 50 - 3


@pytest.mark.parametrize("options, match", [
    (dict(prefix_len=16), "prefix_len"), (dict(context_lengths=[10]), "room for a haystack"),
    (dict(depths=[1.5]), "depths"), (dict(needle_len=40), "distinct"), (dict(vocab_range=[0, 999]), "vocab_range"),
    (dict(colour=1), "unknown"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        circuit_stats.score_heads(load(1600), "retrieval", tokenizer="bytes", progress=False, **options)


def test_wu2024_equals_a_transcription_of_their_code():
    """convention="wu2024" against eager_peers.wu_trial (their find_needle_idx, decode, retrieval_calculate
    and ROUGE-1 success test) on the same prompts: a punctuation haystack and letter needles, so that
    ROUGE's words are exactly the copied answers."""
    pytest.importorskip("rouge_score")
    from eager_peers import wu_trial

    from circuit_stats.protocols import retrieval, wu2024

    ours, eager = load(1600), load(1600, "eager")
    rng = np.random.RandomState(0)
    haystack = "".join(rng.choice(list(".,;:!?-()"), size=400))
    o = dict(convention="wu2024", context_lengths=[72, 96], depths=[0.2, 0.6], n_needles=2, needle_len=10,
             prefix_len=2, vocab_range=[110, 123], seed=3)  # answers of 8 letters in 'n'..'z'
    df = circuit_stats.score_heads(ours, "retrieval", tokenizer="bytes", texts=[haystack], progress=False, **o)
    o = retrieval.PROTOCOL.check_options(o)
    hay = list(haystack.encode())
    scores, success = [], []
    for i, length in enumerate(o["context_lengths"]):
        prompts, _, needles = retrieval.build_trials(hay, length, o["depths"], 2, 10, 2,
                                                     retrieval.needle_candidates(hay, 256, o["vocab_range"]),
                                                     o["seed"] + i, None)
        for prompt, needle in zip(prompts, needles):
            s, ok = wu_trial(eager, prompt, needle[2:].tolist(), lambda ids: wu2024.decode(None, ids), 10,
                             wu2024.rouge1_recall)
            scores.append(s)
            success.append(ok)
    scores, success = torch.stack(scores), torch.tensor(success)
    assert success.sum() >= 2, "the demo model must copy some needles for the comparison to mean anything"
    assert df.attrs["settings"]["n_copied"] == int(success.sum())
    np.testing.assert_allclose(df["retrieval_score"], scores[success].mean(0).reshape(-1), atol=1e-12)
    np.testing.assert_allclose(df["retrieval_score_all_trials"], scores.mean(0).reshape(-1), atol=1e-12)
    assert df["retrieval_score"].max() > 0.5  # the induction heads retrieve


def test_wu2024_needs_a_tokenizer_to_decode():
    with pytest.raises(ValueError, match="wu2024.*tokenizer="):
        circuit_stats.score_heads(load(0), "retrieval", texts=[[46, 44] * 60], convention="wu2024", progress=False)
