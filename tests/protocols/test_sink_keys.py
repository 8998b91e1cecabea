"""`sink` beyond position 0: alpha_k for the first K keys and the secondary sinks grouped by token
id, against Gu et al.'s alpha_k computed from eager probabilities one prompt at a time."""

import math

import numpy as np
import pytest
import torch
from eager_peers import eager_attention
from transformers import AutoModelForCausalLM

import circuit_stats
from circuit_stats.demo.series import demo_series_dir
from circuit_stats.protocols import sink
from circuit_stats.key_sinks import SECONDARY_COLUMNS
from circuit_stats.protocols.texts import ByteTokenizer, default_texts

pytestmark = pytest.mark.hf

SEQ_LEN, MIN_QUERIES = 40, 6


@pytest.fixture(scope="module")
def demo_pair():
    path = demo_series_dir() / "checkpoint-1600"
    return tuple(AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=torch.float32)
                 for impl in ("circuit_stats", "eager"))


def prompts_of(texts, seed):
    """Byte windows of the texts, with a short text among them (used whole, right-padded)."""
    g = torch.Generator().manual_seed(seed)
    picked = [texts[int(i)] for i in torch.randperm(len(texts), generator=g)[:3]]
    picked.append(picked[0][: 17 + int(torch.randint(0, 10, (1,), generator=g))])
    return picked, sink.windows([ByteTokenizer()(t) for t in picked], SEQ_LEN, None)


def eager_alphas(eager, prompts):
    """Per prompt ``(mass [L, H, N], reach [N])``: each key's summed attention and the number of
    queries that can attend it (N - k), from eager probabilities, unpadded."""
    out = []
    for ids in prompts:
        attn = eager_attention(eager, ids)  # [L, H, N, N]
        N = len(ids)
        out.append((attn.sum(-2), torch.arange(N, 0, -1).double()))
    return out


def test_alpha_k_of_the_first_keys_match_eager(demo_pair, seed):
    ours, eager = demo_pair
    texts, prompts = prompts_of(default_texts(), seed)
    df = circuit_stats.score_heads(ours, "sink", texts=texts, tokenizer="bytes", seq_len=SEQ_LEN, first_keys=5,
                                   batch_size=3, progress=False)
    per = eager_alphas(eager, prompts)
    for k in range(5):
        pooled = sum(m[..., k] for m, _ in per) / sum(r[k] for _, r in per)  # Gu et al.'s alpha_k, pooled
        np.testing.assert_allclose(df[f"alpha{k}"], pooled.reshape(-1).numpy(), atol=2e-5, rtol=1e-4)
    assert "alpha5" not in df.columns and "n_secondary_sinks" not in df.columns
    assert "secondary_sinks" not in df.attrs


def well_posed_eps(alphas: torch.Tensor, quantile: float) -> float:
    """A threshold near ``quantile`` of ``alphas`` with no alpha within 1e-4 of it."""
    values = alphas.sort().values
    i = int(quantile * (len(values) - 1))
    while values[i + 1] - values[i] < 2e-4:
        i += 1
    return float(values[i] + values[i + 1]) / 2


def test_secondary_sinks_group_keys_by_token_id(demo_pair, seed):
    ours, eager = demo_pair
    texts, prompts = prompts_of(default_texts(), seed)
    per = eager_alphas(eager, prompts)
    keys = []  # (prompt, position) that may be secondary sinks, and their alpha [L, H]
    for n, ((mass, reach), ids) in enumerate(zip(per, prompts)):
        keys += [(ids[p], mass[..., p] / reach[p]) for p in range(1, len(ids) - MIN_QUERIES + 1)]
    eps = well_posed_eps(torch.stack([a for _, a in keys]).reshape(-1), 0.95)
    df = circuit_stats.score_heads(ours, "sink", texts=texts, tokenizer="bytes", seq_len=SEQ_LEN, eps=eps,
                                   secondary_sinks=True, min_queries=MIN_QUERIES, batch_size=3, progress=False)
    want = {}
    L, H = keys[0][1].shape
    for layer in range(L):
        for head in range(H):
            by_token = {}
            for tok, alpha in keys:
                by_token.setdefault(tok, []).append(float(alpha[layer, head]))
            for tok, vals in by_token.items():
                if any(v > eps for v in vals):
                    want[(layer, head, tok)] = (len(vals), sum(v > eps for v in vals), sum(vals) / len(vals), max(vals))
    got = df.attrs["secondary_sinks"]
    assert want and len(got) == len(want)
    for row in got:
        assert list(row) == list(SECONDARY_COLUMNS)
        n_keys, n_sinks, mean, top = want[(row["layer"], row["head"], row["token_id"])]
        assert (row["n_keys"], row["n_sinks"]) == (n_keys, n_sinks)
        assert math.isclose(row["alpha_mean"], mean, abs_tol=2e-5) and math.isclose(row["alpha_max"], top, abs_tol=2e-5)
        assert row["token"] == chr(row["token_id"])  # printable ASCII bytes
    counts = [sum((lh[0], lh[1]) == (layer, head) for lh in want) for layer, head in zip(df["layer"], df["head"])]
    assert df["n_secondary_sinks"].tolist() == counts


@pytest.mark.parametrize("bad, match", [
    (dict(first_keys=0), "'first_keys' must be an int in \\[1, 64\\]"),
    (dict(first_keys=65), "'first_keys' must be an int in \\[1, 64\\]"),
    (dict(min_queries=0), "'min_queries' must be an int >= 1"),
    (dict(secondary_sinks=1), "'secondary_sinks' must be bool"),
    (dict(first_keys=9), "first_keys=9 asks for alpha_k past the longest prompt \\(5 tokens\\)"),
])
def test_bad_key_options_are_refused_before_any_forward(demo_pair, bad, match, monkeypatch):
    ours, _ = demo_pair
    monkeypatch.setattr(ours, "forward", lambda *a, **k: pytest.fail("no forward may run"))
    with pytest.raises((ValueError, TypeError), match=match):
        circuit_stats.score_heads(ours, "sink", texts=[[65, 66, 67, 68, 69]], progress=False, **bad)
