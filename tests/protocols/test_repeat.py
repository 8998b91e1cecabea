"""`repeat`: fixed-offset scores on the second copy equal the definitions on HF eager attention,
and the TransformerLens number for the same sequences is a different, smaller one."""

import numpy as np
import pytest
import torch
from eager_peers import eager_probs
from hf_helpers import model_pair
from transformers import AutoModelForCausalLM

import circuit_stats
from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS, demo_series_dir
from circuit_stats.protocols import repeat

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)



@pytest.mark.parametrize("family", ["pythia", "olmo", "olmoe"])
def test_repeat_matches_eager(family):
    ours, eager = model_pair(family, vocab_size=300)
    L, n = 13, 6
    df = circuit_stats.score_heads(ours, "repeat", n_sequences=n, seq_len=L, batch_size=4, bos_token_id=2,
                                   progress=False)
    seqs = repeat.make_sequences(n, L, 0, 300, 0)
    ids = torch.cat([torch.full((n, 1), 2), seqs], 1)
    N = ids.shape[1]
    q = torch.arange(N - L, N)
    for layer, probs in enumerate(eager_probs(eager, ids)):
        got = df[df.layer == layer]
        np.testing.assert_allclose(got["previous_token"], probs[:, :, q, q - 1].mean((0, 2)), atol=1e-5)
        np.testing.assert_allclose(got["induction_offset"], probs[:, :, q, q - (L - 1)].mean((0, 2)), atol=1e-5)
        np.testing.assert_allclose(got["duplicate_offset"], probs[:, :, q, q - L].mean((0, 2)), atol=1e-5)
        np.testing.assert_allclose(got["sink"], probs[:, :, :, 0].mean((0, 2)), atol=1e-5)
    assert "induction" not in df.columns  # that name means token-match mass (natural, TransformerLens)
    assert repeat.PROTOCOL.induction_score == "induction_offset"


def test_thresholds_are_keyed_by_kind_of_head():
    ours, _ = model_pair("pythia", vocab_size=300)
    df = circuit_stats.score_heads(ours, "repeat", n_sequences=2, seq_len=5, progress=False,
                                   thresholds={"induction": 0.0})
    assert df["is_induction"].all()  # a threshold of 0 passes every head
    with pytest.raises(ValueError, match="unknown keys \\['induction_offset'\\]"):
        circuit_stats.score_heads(ours, "repeat", thresholds={"induction_offset": 0.1}, progress=False)


def test_repeat_is_about_twice_detect_head_on_the_demo_induction_heads():
    """The issue's finding: on the same sequences, `repeat` (second copy, fixed offsets) scores
    the demo's induction heads about 2x TransformerLens' detect_head (every query, token match).
    The TransformerLens number comes from `natural` with convention="transformerlens"."""
    model = AutoModelForCausalLM.from_pretrained(demo_series_dir() / "checkpoint-1600",
                                                 attn_implementation="circuit_stats", dtype=torch.float32)
    o = DEMO_REPEAT_OPTIONS
    ours = circuit_stats.score_heads(model, "repeat", progress=False, **o)
    seqs = repeat.make_sequences(o["n_sequences"], o["seq_len"], *o["vocab_range"], seed=0)
    tl = circuit_stats.score_heads(model, "natural", texts=seqs, convention="transformerlens", bos_token_id=0,
                                   batch_size=16, progress=False)
    heads = ours["label"] == "induction"
    assert heads.any()
    ratio = ours.loc[heads, "induction_offset"].to_numpy() / tl.loc[heads, "induction"].to_numpy()
    assert ((ratio > 1.6) & (ratio < 2.4)).all(), ratio


def test_bad_repeat_input():
    ours, _ = model_pair("pythia", vocab_size=256)
    with pytest.raises(ValueError, match="unknown repeat options"):
        circuit_stats.score_heads(ours, "repeat", n_seqs=3, progress=False)
    with pytest.raises(ValueError, match="'seq_len' must be an int >= 2"):
        circuit_stats.score_heads(ours, "repeat", seq_len=1, progress=False)
    with pytest.raises(ValueError, match="vocab_range"):
        circuit_stats.score_heads(ours, "repeat", vocab_range=(50, 10), progress=False)
    with pytest.raises(ValueError, match="texts/tokenizer"):
        circuit_stats.score_heads(ours, "repeat", texts=["x"], progress=False)
