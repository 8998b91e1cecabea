"""`sink`: the default windows and Gu et al.'s recipe (first 64 tokens, BOS + 63, per-prompt sink
rate), both equal to eager attention."""

import numpy as np
import pytest
import torch
from eager_peers import compute_attention_sink, eager_probs, gu_reference, importance_scores, measure_attention_sink
from hf_helpers import model_pair
from tokenizers import processors
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import circuit_stats
from circuit_stats.protocols import sink
from circuit_stats.demo.series import demo_series_dir
from circuit_stats.protocols.texts import ByteTokenizer, default_texts
from circuit_stats.tokenization import byte_level_backend, byte_level_tokenizer, byte_to_unicode

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

BOS = 1



@pytest.mark.parametrize("family", ["pythia", "olmo", "olmoe"])
def test_sink_matches_eager(family):
    ours, eager = model_pair(family, vocab_size=256)
    texts = default_texts()[:3]
    df = circuit_stats.score_heads(ours, "sink", texts=texts, tokenizer="bytes", seq_len=40, batch_size=5,
                                   progress=False)
    prompts = sink.windows([ByteTokenizer()(t) for t in texts], 40, None)
    ids = torch.tensor(prompts)
    per = torch.stack([p[:, :, :, 0].mean(2) for p in eager_probs(eager, ids)], 1)  # [samples, L, H]
    np.testing.assert_allclose(df["alpha0"], per.mean(0).reshape(-1).numpy(), atol=1e-5)
    assert df.attrs["sink_rate"] == pytest.approx(float((per > 0.3).double().mean()) * 100)
    assert (df["is_first_token"] == (df["alpha0"] > 0.3)).all()
    assert "is_sink" not in df.columns


def texts_of(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 60, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("family", ["pythia", "olmo"])
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
def test_gu_convention_matches_eager(family, eps):
    """First 64 tokens of each text with the BOS as the first of them (BOS + 63), alpha0 per
    prompt over every query, sink rate per prompt at any eps, then the mean over prompts."""
    ours, eager = model_pair(family, vocab_size=64, initializer_range=0.5)
    texts = texts_of([70, 200, 64, 63, 90])  # 63 text tokens + BOS = 64: exactly long enough
    df = circuit_stats.score_heads(ours, "sink", texts=texts, convention="gu2025", bos_token_id=BOS, eps=eps,
                                   batch_size=2, progress=False)
    prompts = [[BOS] + t[:63] for t in texts]
    per = gu_reference(eager, prompts)  # [prompts, layers, heads]
    np.testing.assert_allclose(df["alpha0"], per.mean(0).reshape(-1).numpy(), atol=1e-6, rtol=0)
    rates = (per > eps).double().mean((1, 2)) * 100
    np.testing.assert_allclose(df.attrs["sink_rate_per_prompt"], rates.numpy(), atol=1e-9)
    assert df.attrs["sink_rate"] == pytest.approx(float(rates.mean()))
    s = df.attrs["settings"]
    assert s["prompt_lengths"] == [64] and s["n_prompts"] == 5 and s["bos_token_id"] == BOS


def test_default_windows_versus_gu_prompts():
    """The default takes consecutive windows and keeps short texts; Gu et al. take one prompt
    per text and refuse the short ones (or drop and count them)."""
    ours, _ = model_pair("pythia", vocab_size=64)
    texts = texts_of([200, 30, 100])
    native = circuit_stats.score_heads(ours, "sink", texts=texts, bos_token_id=BOS, progress=False)
    assert native.attrs["settings"]["n_prompts"] == 3 + 1 + 1  # 3 windows of 200, the whole 30, 1 of 100
    assert native.attrs["settings"]["prompt_lengths"] == [31, 65]  # BOS in front of every window
    with pytest.raises(ValueError, match="1 of 3 texts have fewer than 64 tokens \\(BOS included\\)"):
        circuit_stats.score_heads(ours, "sink", texts=texts, convention="gu2025", bos_token_id=BOS, progress=False)
    gu = circuit_stats.score_heads(ours, "sink", texts=texts, convention="gu2025", bos_token_id=BOS,
                                   drop_short=True, progress=False)
    assert gu.attrs["settings"]["n_prompts"] == 2 and gu.attrs["settings"]["n_dropped_short"] == 1
    assert gu.attrs["settings"]["prompt_lengths"] == [64]


def test_sink_rate_is_per_prompt():
    alpha0 = torch.tensor([[[0.9, 0.1]], [[0.2, 0.4]], [[0.05, 0.01]]])  # [prompts, layers, heads]
    assert sink.sink_rate(alpha0, 0.3).tolist() == [50.0, 50.0, 0.0]
    assert sink.sink_rate(alpha0, 0.15).tolist() == [50.0, 100.0, 0.0]


def test_bad_sink_options():
    ours, _ = model_pair("pythia", vocab_size=64)
    for bad, match in [(dict(eps=1.0), "'eps' must be a number in \\(0, 1\\)"), (dict(eps=0), "'eps'"),
                       (dict(seq_len=1), "'seq_len'"), (dict(convention="gu"), "'convention'"),
                       (dict(drop_short=True), "drop_short"), (dict(windows=3), "unknown sink options")]:
        with pytest.raises(ValueError, match=match):
            circuit_stats.score_heads(ours, "sink", texts=[[5, 6, 7]], progress=False, **bad)


def llama_style_byte_tokenizer() -> PreTrainedTokenizerFast:
    """The demo's byte-level tokenizer, but adding its BOS (id 0) in front of every text by itself,
    as Llama's tokenizer does."""
    bos = byte_to_unicode()[0]
    backend = byte_level_backend()
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, split_special_tokens=True)


@pytest.fixture(scope="module")
def demo_pair():
    """The trained demo model (it has sinks) under circuit_stats and under eager attention."""
    path = demo_series_dir() / "checkpoint-1600"
    return tuple(AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=torch.float32)
                 for impl in ("circuit_stats", "eager"))


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_gu_convention_equals_their_code(demo_pair, style, tmp_path):
    """Gu et al.'s code tokenizes with the tokenizer's defaults: no BOS with a GPT-2/Pythia-style
    tokenizer (a BOS exists, none is added), a BOS with a Llama-style one. Ours equals a
    transcription of their measure_attention_sink/compute_attention_sink for both."""
    ours, eager = demo_pair
    tok = byte_level_tokenizer() if style == "gpt2" else llama_style_byte_tokenizer()
    texts = default_texts()
    assert tok.bos_token_id == 0 and (tok("ab")["input_ids"][0] == 0) == (style == "llama")
    measure_attention_sink(eager, tok, texts, tmp_path / "scores.npy", token_length=64)
    alpha0 = importance_scores(tmp_path / "scores.npy")[..., 0].double()  # [prompts, layers, heads]
    for eps in (0.03, 0.035, 0.04, 0.05):  # rates between 1.25 and 67.5 on this model
        # well-posed: no alpha0 within the kernel's float32 error of the threshold
        assert (alpha0 - eps).abs().min() > 1e-4
        df = circuit_stats.score_heads(ours, "sink", tokenizer=tok, texts=texts, convention="gu2025", eps=eps,
                                       progress=False)
        theirs = float(compute_attention_sink(tmp_path / "scores.npy", eps)[0])
        assert df.attrs["sink_rate"] == pytest.approx(theirs, abs=1e-3)
        np.testing.assert_allclose(df["alpha0"], alpha0.mean(0).reshape(-1).numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(df["sink_rate"], ((alpha0 > eps).double().mean(0) * 100).reshape(-1).numpy())
        assert df["sink_rate"].mean() == pytest.approx(theirs, abs=1e-3)
    assert df.attrs["settings"]["special_tokens"]["prepended"] == ([0] if style == "llama" else [])
    assert df.attrs["settings"]["prompt_lengths"] == [64]


def test_gu_convention_explicit_bos(demo_pair, tmp_path):
    """bos_token_id= puts one BOS in front (BOS + 63): with a tokenizer that adds none, the same
    numbers as their code with a tokenizer that adds it; a second BOS is refused."""
    ours, eager = demo_pair
    texts = default_texts()[:4]
    measure_attention_sink(eager, llama_style_byte_tokenizer(), texts, tmp_path / "scores.npy", token_length=64)
    alpha0 = importance_scores(tmp_path / "scores.npy")[..., 0].double()
    df = circuit_stats.score_heads(ours, "sink", tokenizer=byte_level_tokenizer(), texts=texts, convention="gu2025",
                                   bos_token_id=0, eps=0.03, progress=False)
    np.testing.assert_allclose(df["alpha0"], alpha0.mean(0).reshape(-1).numpy(), atol=1e-5, rtol=0)
    assert df.attrs["settings"]["bos_token_id"] == 0
    with pytest.raises(ValueError, match="already prepends token 0"):
        circuit_stats.score_heads(ours, "sink", tokenizer=llama_style_byte_tokenizer(), texts=texts,
                                  convention="gu2025", bos_token_id=0, progress=False)
