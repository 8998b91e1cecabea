"""profile(statistics=[..., "key_attention"]): the attention received per bin of key position,
against eager column sums per document, pooled over documents, and its plot."""

import math

import pytest
import torch
from circuit_stats.arguments import statistics as parse_statistics
from circuit_stats.models import tiny_model
from circuit_stats.profiling import profile
from circuit_stats.profiling.keys import pooled_key_attention
from hf_helpers import model_pair

pytestmark = pytest.mark.hf

EDGES = [0, 1, 4, 16, math.inf]


def token_docs(seed, lengths=(37, 23)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 60, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def eager_key_bins(eager, ids):
    """``(mass [L, H, bins], pairs [bins])`` of one document: the attention the keys of each bin
    received from every query, and the (query, key) pairs that could carry it (N - p per key p)."""
    probs = torch.stack([a[0].double() for a in eager(torch.tensor([ids]), output_attentions=True).attentions])
    received = probs.sum(2)  # [L, H, N]
    N = len(ids)
    bins = [(int(lo), min(N, int(hi) if hi != math.inf else N)) for lo, hi in zip(EDGES, EDGES[1:])]
    mass = torch.stack([received[..., lo:hi].sum(-1) for lo, hi in bins], -1)
    pairs = torch.tensor([float(sum(N - p for p in range(lo, hi))) for lo, hi in bins])
    return mass, pairs


def test_key_attention_rows_match_eager(seed):
    ours, eager = model_pair("pythia", seed=seed % 1000, vocab_size=64)
    docs = token_docs(seed)
    df = profile(ours, docs, position_bins=EDGES, statistics=["sink", "key_attention"], chunk_size=9, progress=False)
    assert {"key_attention", "key_mass", "key_pairs"} <= set(df.columns)
    for d, ids in enumerate(docs):
        mass, pairs = eager_key_bins(eager, ids)
        rows = df[df["doc_index"] == d]
        want_mass = mass[rows["layer"].to_numpy(), rows["head"].to_numpy(), rows["bin"].to_numpy()]
        torch.testing.assert_close(torch.tensor(rows["key_mass"].to_numpy()), want_mass, atol=2e-5, rtol=1e-4)
        assert rows["key_pairs"].tolist() == pairs[rows["bin"].to_numpy()].tolist()
        torch.testing.assert_close(torch.tensor(rows["key_attention"].to_numpy()), want_mass / pairs[rows["bin"].to_numpy()])
    pooled = pooled_key_attention(df)
    row = pooled[(pooled["layer"] == 1) & (pooled["head"] == 0) & (pooled["bin"] == 2)].iloc[0]
    both = [eager_key_bins(eager, ids) for ids in docs]
    want = sum(m[1, 0, 2] for m, _ in both) / sum(p[2] for _, p in both)
    assert row["key_attention"] == pytest.approx(float(want), abs=1e-6)


def test_key_attention_is_opt_in_and_plotted(seed, tmp_path):
    model = tiny_model("pythia", seed=seed % 1000, initializer_range=0.3, vocab_size=64)
    docs = token_docs(seed)
    plain = profile(model, docs, position_bins=EDGES, statistics=["sink"], progress=False)
    assert "key_attention" not in plain.columns
    profile(model, docs, position_bins=EDGES, statistics=["sink", "key_attention"], out=tmp_path / "p", progress=False)
    assert (tmp_path / "p" / "plots" / "key_position_attention.png").stat().st_size > 10_000
    profile(model, docs, position_bins=EDGES, statistics=["sink"], out=tmp_path / "q", progress=False)
    assert not (tmp_path / "q" / "plots" / "key_position_attention.png").exists()


def test_the_command_line_takes_key_attention_and_eval_refuses_it():
    assert parse_statistics("sink,key_attention") == ["sink", "key_attention"]
    from circuit_stats.evaluation.harness import check_settings

    model = tiny_model("pythia", vocab_size=64)
    with pytest.raises(ValueError, match=r"\['key_attention'\] are profile statistics"):
        check_settings(model, ["task"], ["sink", "key_attention"], 16, None, None)
