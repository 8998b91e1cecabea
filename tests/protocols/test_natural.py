"""`natural`: the default convention pools every query of every text; the TransformerLens
convention equals detect_head (error_measure="mul") computed from HF eager attention."""

import numpy as np
import pandas as pd
import pytest
import torch
from circuit_stats.kernels import stats_from_probabilities
from eager_peers import eager_attention, eager_probs, transformerlens_reference
from hf_helpers import model_pair

import circuit_stats
from circuit_stats.protocols.texts import ByteTokenizer, default_texts

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

FAMILIES3 = ["pythia", "olmo", "olmoe"]
BOS = 1
LENGTHS = (20, 150, 60, 300)  # the texts: pooling and per-text averaging differ



def token_texts(seed: int, lengths=LENGTHS) -> list[list[int]]:
    """Token-id texts from a small vocabulary (many matches), with repeated stretches, tokens
    repeating their predecessor and the BOS id inside the text (every correction term occurs)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        t = torch.randint(3, 20, (n,), generator=g)
        t[n // 2 : n // 2 + n // 4] = t[2 : 2 + n // 4].clone()
        t[5] = t[4]
        t[7] = BOS
        out.append(t.tolist())
    return out


@pytest.mark.parametrize("family", FAMILIES3)
def test_natural_matches_eager(family):
    ours, eager = model_pair(family, vocab_size=256)
    texts = default_texts()[:3]
    df = circuit_stats.score_heads(ours, "natural", texts=texts, tokenizer="bytes", batch_size=2, max_tokens=150,
                                   progress=False)
    cols = {"induction": [], "duplicate": [], "previous_token": [], "sink": [], "entropy": []}
    total = 0
    for t in texts:
        ids = torch.tensor([ByteTokenizer()(t)[:150]])
        total += ids.shape[1]
        for layer, p in enumerate(eager_probs(eager, ids)):
            st = stats_from_probabilities(p, offsets=(1,), token_ids=ids, entropy=True)
            vals = {"induction": st.induction, "duplicate": st.duplicate, "previous_token": st.offsets[..., 0],
                    "sink": st.sink, "entropy": st.entropy}
            for k, v in vals.items():
                s = v.sum((0, 2))
                if len(cols[k]) <= layer:
                    cols[k].append(s)
                else:
                    cols[k][layer] = cols[k][layer] + s
    for k, per_layer in cols.items():
        np.testing.assert_allclose(df[k], (torch.stack(per_layer) / total).reshape(-1).numpy(), atol=1e-5, rtol=1e-5,
                                   err_msg=k)
    assert df.attrs["settings"]["averaging"] == "pooled over every query of every text"


@pytest.mark.parametrize("family,exclude_bos,exclude_current_token", [
    ("pythia", False, False), ("pythia", True, False), ("pythia", False, True), ("pythia", True, True),
    ("olmo", True, True)])
def test_transformerlens_convention_matches_eager_detect_head(family, exclude_bos, exclude_current_token):
    ours, eager = model_pair(family, vocab_size=64)
    texts = token_texts(seed=hash((family, exclude_bos, exclude_current_token)) % 1000)
    df = circuit_stats.score_heads(ours, "natural", texts=texts, convention="transformerlens", bos_token_id=BOS,
                                   exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
                                   batch_size=3, progress=False)
    want = transformerlens_reference(eager, [[BOS] + t for t in texts], exclude_bos, exclude_current_token)
    for col, val in want.items():
        np.testing.assert_allclose(df[col], val.reshape(-1).numpy(), atol=1e-6, rtol=0, err_msg=col)
    assert df.attrs["settings"]["bos_token_id"] == BOS
    assert df.attrs["settings"]["averaging"].startswith("per text")


def test_pooling_and_per_text_averaging_differ_on_unequal_texts():
    """The issue's 20/150/60/300-token texts: each convention equals its own definition, and
    they are different numbers (the default weighs the 300-token text 15x the 20-token one)."""
    ours, eager = model_pair("pythia", vocab_size=64)
    texts = [[BOS] + t for t in token_texts(seed=3)]
    pooled = circuit_stats.score_heads(ours, "natural", texts=texts, batch_size=4, progress=False)
    per_text = circuit_stats.score_heads(ours, "natural", texts=[t[1:] for t in texts], bos_token_id=BOS,
                                         convention="transformerlens", batch_size=4, progress=False)
    ind = []  # per text [layers, heads, N]: token-match induction mass of every query
    for t in texts:
        a = eager_attention(eager, t)  # layers stand in for the batch
        ind.append(stats_from_probabilities(a, token_ids=torch.tensor([t]).expand(a.shape[0], -1)).induction)
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.float64)
    want_pooled = torch.stack([i.sum(-1) for i in ind]).sum(0) / lengths.sum()
    want_per_text = torch.stack([i.mean(-1) for i in ind]).mean(0)
    np.testing.assert_allclose(pooled["induction"], want_pooled.reshape(-1).numpy(), atol=1e-6)
    np.testing.assert_allclose(per_text["induction"], want_per_text.reshape(-1).numpy(), atol=1e-6)
    assert np.abs(pooled["induction"] - per_text["induction"]).max() > 1e-3


def test_exclude_bos_re_divides_by_the_mass_left():
    """Dropping query 0 is not TransformerLens' exclude_bos: that one removes the attention on
    the BOS key from every row and re-divides, induction / (1 - sink) for one text."""
    ours, _ = model_pair("pythia", vocab_size=64)
    text = token_texts(seed=5, lengths=(80,))
    kw = dict(texts=text, convention="transformerlens", bos_token_id=BOS, progress=False)
    plain = circuit_stats.score_heads(ours, "natural", **kw)
    excluded = circuit_stats.score_heads(ours, "natural", exclude_bos=True, **kw)
    np.testing.assert_allclose(excluded["induction"], plain["induction"] / (1 - plain["sink"]), rtol=1e-5, atol=1e-7)
    assert (excluded["induction"] >= plain["induction"] - 1e-7).all()


def test_transformerlens_convention_defaults_to_the_config_bos():
    """Without bos_token_id and a tokenizer BOS (token ids, tokenizer="bytes"), the model config's
    bos_token_id goes in front, as an explicit bos_token_id would."""
    ours, _ = model_pair("pythia", vocab_size=64)
    ours.config.bos_token_id = BOS
    texts = token_texts(seed=7, lengths=(30, 50))
    kw = dict(texts=texts, convention="transformerlens", progress=False)
    implicit = circuit_stats.score_heads(ours, "natural", **kw)
    explicit = circuit_stats.score_heads(ours, "natural", bos_token_id=BOS, **kw)
    other = circuit_stats.score_heads(ours, "natural", bos_token_id=BOS + 1, **kw)
    pd.testing.assert_frame_equal(implicit, explicit)
    assert implicit.attrs["settings"]["bos_token_id"] == BOS and (implicit["sink"] != other["sink"]).any()


def test_transformerlens_convention_needs_a_bos():
    ours, _ = model_pair("pythia", vocab_size=64)
    ours.config.bos_token_id = None
    with pytest.raises(ValueError, match="bos_token_id"):
        circuit_stats.score_heads(ours, "natural", texts=[[5, 6, 7]], convention="transformerlens", progress=False)
    with pytest.raises(ValueError, match="already starts with the BOS"):
        circuit_stats.score_heads(ours, "natural", texts=[[BOS, 6, 7]], convention="transformerlens",
                                  bos_token_id=BOS, progress=False)
    with pytest.raises(ValueError, match="TransformerLens options"):
        circuit_stats.score_heads(ours, "natural", texts=[[5, 6, 7]], exclude_bos=True, progress=False)


def test_bad_natural_input():
    ours, _ = model_pair("pythia", vocab_size=256)
    with pytest.raises(ValueError, match="vocabulary"):
        circuit_stats.score_heads(ours, "natural", texts=[[1, 2, 999]], progress=False)
    with pytest.raises(ValueError, match="unknown keys \\['inductoin'\\] in natural option 'thresholds'"):
        circuit_stats.score_heads(ours, "natural", texts=[[1, 2]], thresholds={"inductoin": 0.2}, progress=False)
    with pytest.raises(ValueError, match="convention"):
        circuit_stats.score_heads(ours, "natural", texts=[[1, 2]], convention="tl", progress=False)
