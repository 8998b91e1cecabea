"""Standard errors of head scores (``<score>_se``) and label margins: the formulas, the spread of
per-sequence eager scores, 1/sqrt(n) shrinkage, and every protocol's columns."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from eager_peers import eager_attention, eager_probs, transformerlens_reference
from hf_helpers import model_pair

import circuit_stats
from circuit_stats.labels import INDUCTION, UNCLASSIFIED
from circuit_stats.protocols import repeat
from circuit_stats.protocols.uncertainty import BORDERLINE_SE, label_margins, mean_se, ratio_se


def test_mean_se_equal_weights_is_std_over_sqrt_n(seed):
    x = torch.randn(7, 3, 2, dtype=torch.float64) + 5
    mean, se = mean_se(x)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(se, x.std(0) / math.sqrt(7))


def test_pooled_se_is_the_ratio_estimator_and_skips_empty_units(seed):
    x = torch.rand(9, 4, dtype=torch.float64)
    w = torch.randint(1, 50, (9,)).double()
    w[3] = 0  # a sequence none of whose queries was selected: its mean is NaN
    x[3] = float("nan")
    mean, se = mean_se(x, w)
    keep = w > 0
    xs, ws = x[keep].numpy(), w[keep].numpy()[:, None]
    m = (ws * xs).sum(0) / ws.sum(0)
    n = keep.sum().item()
    want = np.sqrt(n / (n - 1) * ((ws * (xs - m)) ** 2).sum(0)) / ws.sum(0)
    np.testing.assert_allclose(mean.numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(se.numpy(), want, rtol=1e-12)
    # equal weights reduce to the plain standard error
    torch.testing.assert_close(mean_se(x[keep], torch.full((n,), 3.0))[1], mean_se(x[keep])[1])


def test_one_unit_has_no_standard_error():
    assert torch.isnan(mean_se(torch.ones(1, 2))[1]).all()
    assert torch.isnan(ratio_se(torch.ones(1, 2), torch.ones(1, 2))).all()


def test_ratio_se_matches_the_spread_of_bootstrap_ratios():
    g = torch.Generator().manual_seed(0)  # a fixed sample: the check compares two estimators of one number
    a = 2 + torch.rand(400, generator=g, dtype=torch.float64)
    b = 1 + 0.5 * a + torch.rand(400, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 400, (4000, 400), generator=g)
    boot = a[idx].mean(1) / b[idx].mean(1)
    assert float(ratio_se(a, b)) == pytest.approx(float(boot.std()), rel=0.1)


def test_label_margins_count_standard_errors_from_the_deciding_threshold():
    df = pd.DataFrame({"induction": [0.50, 0.32, 0.10, 0.2], "induction_se": [0.01, 0.01, 0.05, float("nan")],
                       "label": [INDUCTION, INDUCTION, UNCLASSIFIED, UNCLASSIFIED]})
    out = label_margins(df, {"induction": 0.3}, {"induction": INDUCTION})
    np.testing.assert_allclose(out["label_margin"][:3], [20.0, 2.0, -4.0])
    assert math.isnan(out["label_margin"][3])
    assert out["is_borderline"].tolist() == [False, False, False, True]
    assert BORDERLINE_SE == 2.0
    closer = label_margins(df.assign(induction_se=0.02), {"induction": 0.3}, {"induction": INDUCTION})
    assert closer["is_borderline"].tolist() == [False, True, False, False]


@pytest.mark.hf
def test_repeat_se_is_the_spread_of_per_sequence_eager_scores():
    ours, eager = model_pair("pythia", vocab_size=300)
    L, n = 9, 7
    df = circuit_stats.score_heads(ours, "repeat", n_sequences=n, seq_len=L, batch_size=3, progress=False)
    ids = repeat.make_sequences(n, L, 0, 300, 0)
    q = torch.arange(L, 2 * L)
    for layer, probs in enumerate(eager_probs(eager, ids)):  # [n, H, N, N]
        got = df[df.layer == layer]
        per_seq = {"induction_offset": probs[:, :, q, q - (L - 1)].mean(-1),
                   "previous_token": probs[:, :, q, q - 1].mean(-1), "sink": probs[:, :, :, 0].mean(-1)}
        for col, values in per_seq.items():  # [n, H]: equal query counts, so std / sqrt(n)
            np.testing.assert_allclose(got[col + "_se"], values.std(0) / math.sqrt(n), rtol=1e-4, atol=1e-7,
                                       err_msg=col)


@pytest.mark.hf
def test_natural_pooled_se_weighs_texts_by_their_queries():
    ours, eager = model_pair("pythia", vocab_size=300)
    g = torch.Generator().manual_seed(3)
    texts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (5, 17, 11, 23)]
    df = circuit_stats.score_heads(ours, "natural", texts=texts, batch_size=2, progress=False)
    w = torch.tensor([len(t) for t in texts], dtype=torch.float64)
    sink = torch.stack([eager_attention(eager, t)[..., :, 0].mean(-1) for t in texts])  # [texts, L, H]
    want_mean, want_se = mean_se(sink, w)
    np.testing.assert_allclose(df["sink"], want_mean.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(df["sink_se"], want_se.reshape(-1), rtol=1e-4, atol=1e-7)
    assert {"induction_se", "duplicate_se", "previous_token_se", "entropy_se", "label_margin",
            "is_borderline"} <= set(df.columns)


@pytest.mark.hf
def test_transformerlens_convention_se_is_over_per_text_scores():
    ours, eager = model_pair("pythia", vocab_size=40)
    seqs = [[0] + s for s in repeat.make_sequences(5, 7, 1, 40, seed=7).tolist()]
    df = circuit_stats.score_heads(ours, "natural", texts=[s[1:] for s in seqs], convention="transformerlens",
                                   bos_token_id=0, batch_size=2, progress=False)
    per_text = [transformerlens_reference(eager, [s])["induction"] for s in seqs]
    want = torch.stack(per_text).std(0) / math.sqrt(len(seqs))
    np.testing.assert_allclose(df["induction_se"], want.reshape(-1), rtol=1e-4, atol=1e-7)


@pytest.mark.hf
def test_se_shrinks_like_one_over_sqrt_n():
    ours, _ = model_pair("pythia", vocab_size=300)
    small, big = (circuit_stats.score_heads(ours, "repeat", n_sequences=n, seq_len=8, progress=False)
                  for n in (16, 256))
    ratio = (small["induction_offset_se"] / big["induction_offset_se"]).median()
    assert 2.5 < ratio < 6.0  # sqrt(256 / 16) = 4, up to the sample's own spread


@pytest.mark.hf
def test_sink_and_xu2026_report_standard_errors():
    ours, _ = model_pair("pythia", vocab_size=300)
    g = torch.Generator().manual_seed(5)
    texts = [torch.randint(0, 300, (40,), generator=g).tolist() for _ in range(4)]
    sink = circuit_stats.score_heads(ours, "sink", texts=texts, seq_len=16, progress=False)
    per_prompt = len(sink.attrs["sink_rate_per_prompt"])
    assert per_prompt == 8 and sink["alpha0_se"].gt(0).all() and "sink_rate_se" in sink.attrs
    big_vocab, _ = model_pair("pythia", vocab_size=10000)  # xu2026 draws ids from [100, 10000)
    xu = circuit_stats.score_heads(big_vocab, "xu2026", n_sequences=6, seq_len=140, n_baseline=10, progress=False)
    assert {"attn_induction_se", "baseline_se", "sel_induction_se", "label_margin", "is_borderline"} <= set(xu.columns)
    assert xu["sel_induction_se"].gt(0).all()
