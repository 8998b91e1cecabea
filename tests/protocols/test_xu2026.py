"""`xu2026`: the published recipe, and scores equal to the definitions on HF eager attention."""

import numpy as np
import pytest
import torch
from eager_peers import eager_probs
from hf_helpers import model_pair

import circuit_stats
from circuit_stats.protocols import xu2026

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

FAMILIES3 = ["pythia", "olmo", "olmoe"]



def assert_first_sequence_follows_the_rng(seqs, ab, T: int, low: int, high: int, max_redrawn: int) -> None:
    """The first sequence, re-derived by hand from the recipe's RNG calls (seed 42): only
    collisions with a or b (at most ``max_redrawn`` before ab) may have been redrawn."""
    rng = np.random.RandomState(42)
    s0 = rng.randint(low, high, size=T)
    a0, b0 = rng.choice(np.arange(low, high), size=2, replace=False)
    ab0 = rng.randint(20, 128)
    assert ab[0] == ab0 and seqs[0, ab0] == a0 and seqs[0, ab0 + 1] == b0 and seqs[0, -1] == a0
    assert (seqs[0, :ab0] == s0[:ab0]).sum() >= ab0 - max_redrawn


def test_xu2026_batch_follows_the_published_recipe():
    seqs, ab = xu2026.make_sequences()  # the full default: 2000 x 256, seed 42
    assert seqs.shape == (2000, 256) and seqs.min() >= 100 and seqs.max() < 10000
    assert ((ab >= 20) & (ab < 128)).all()
    for n in range(len(seqs)):
        a, b = seqs[n, ab[n]], seqs[n, ab[n] + 1]
        assert a != b
        assert set(np.flatnonzero(seqs[n] == a)) == {ab[n], 255}, f"sequence {n}: a elsewhere"
        assert set(np.flatnonzero(seqs[n] == b)) == {ab[n] + 1}, f"sequence {n}: b elsewhere"
    assert_first_sequence_follows_the_rng(seqs, ab, 256, 100, 10000, max_redrawn=1)
    base = xu2026.baseline_positions()
    assert len(base) == len(set(base)) == 50
    assert not set(base) & {0, 255, 254, 253, 252, 251, 250} and min(base) >= 1 and max(base) <= 254


@pytest.mark.parametrize("family", FAMILIES3)
@pytest.mark.parametrize("bos", [None, 7])
def test_xu2026_matches_eager(family, bos):
    ours, eager = model_pair(family, vocab_size=10000)
    n, T = 10, 160
    df = circuit_stats.score_heads(ours, "xu2026", n_sequences=n, seq_len=T, batch_size=4, bos_token_id=bos,
                                   progress=False)
    seqs, ab = xu2026.make_sequences(n, T)
    ids = torch.from_numpy(seqs)
    shift = 0
    if bos is not None:
        ids, shift = torch.cat([torch.full((n, 1), bos), ids], 1), 1
    base = [p + shift for p in xu2026.baseline_positions(T)]
    rows = torch.arange(n)
    want = {k: [] for k in ["induction", "duplicate_token", "previous_token", "self", "first_token", "local", "baseline"]}
    for probs in eager_probs(eager, ids):
        last = probs[:, :, -1, :]  # [n, H, N]: the last query only
        Tq = last.shape[-1]
        want["induction"].append(last[rows, :, torch.from_numpy(ab) + 1 + shift].mean(0))
        want["duplicate_token"].append(last[rows, :, torch.from_numpy(ab) + shift].mean(0))
        want["previous_token"].append(last[:, :, Tq - 2].mean(0))
        want["self"].append(last[:, :, Tq - 1].mean(0))
        want["first_token"].append(last[:, :, 0].mean(0))
        want["local"].append(last[:, :, [Tq - 3, Tq - 4, Tq - 5, Tq - 6]].mean((0, 2)))
        want["baseline"].append(last[:, :, base].mean((0, 2)))
    for name, vals in want.items():
        col = "baseline" if name == "baseline" else f"attn_{name}"
        np.testing.assert_allclose(df[col].to_numpy(), torch.stack(vals).reshape(-1).numpy(), atol=1e-5, rtol=1e-4,
                                   err_msg=f"{family} {col}")
    sel = df[[c for c in df.columns if c.startswith("sel_")]].to_numpy()
    np.testing.assert_allclose(sel[:, 0], df["attn_induction"] / np.maximum(df["baseline"], 1e-8))
    assert df.attrs["protocol"] == "xu2026" and df.attrs["settings"]["seed"] == 42


def test_xu2026_labels_and_screens_follow_the_thresholds():
    ours, _ = model_pair("pythia", vocab_size=10000)
    df = circuit_stats.score_heads(ours, "xu2026", n_sequences=4, seq_len=140, class_threshold=1.0,
                                   induction_screen=2.0, progress=False)
    sel = df[[f"sel_{c.replace('-', '_')}" for c in xu2026.CLASSES]].to_numpy()
    for i, row in enumerate(sel):
        want = xu2026.CLASSES[row.argmax()] if row.max() >= 1.0 else "unclassified"
        assert df["label"][i] == want
    assert (df["screen_induction"] == (df["sel_induction"] >= 2.0)).all()
    assert set(df["label"]) - {"unclassified"}, "some head should pass a threshold of 1x"


def test_bad_xu2026_input():
    ours, _ = model_pair("pythia", vocab_size=256)
    with pytest.raises(ValueError, match="vocabulary"):
        circuit_stats.score_heads(ours, "xu2026", n_sequences=2, progress=False)
    with pytest.raises(ValueError, match="'seq_len' must be an int >= 130"):
        circuit_stats.score_heads(ours, "xu2026", seq_len=100, progress=False)


def test_xu2026_vocab_range_follows_the_recipe_in_that_range():
    """vocab_range=(low, high) runs the same recipe (the same RNG calls) on ids in [low, high)."""
    seqs, ab = xu2026.make_sequences(50, 140, 42, 32, 127)
    assert seqs.min() >= 32 and seqs.max() < 127
    assert_first_sequence_follows_the_rng(seqs, ab, 140, 32, 127, max_redrawn=3)
    default, paper = (xu2026.make_sequences(20, 140, 42, *r) for r in [(), (100, 10000)])
    np.testing.assert_array_equal(default[0], paper[0])


def test_xu2026_vocab_range_on_a_small_vocabulary():
    """The paper's ids do not fit a 256-token vocabulary: the error says what to pass; with
    vocab_range the protocol runs and records the range."""
    ours, _ = model_pair("pythia", vocab_size=256)
    with pytest.raises(ValueError, match=r"vocabulary of 256; pass vocab_range=\(low, high\)"):
        circuit_stats.score_heads(ours, "xu2026", n_sequences=2, progress=False)
    df = circuit_stats.score_heads(ours, "xu2026", n_sequences=4, vocab_range=(32, 127), progress=False)
    assert df.attrs["settings"]["vocab_range"] == [32, 127] and df["baseline"].gt(0).all()
    big, _ = model_pair("pythia", vocab_size=10000)
    default = circuit_stats.score_heads(big, "xu2026", n_sequences=3, progress=False)
    explicit = circuit_stats.score_heads(big, "xu2026", n_sequences=3, vocab_range=(100, 10000), progress=False)
    assert default.attrs["settings"]["vocab_range"] == [100, 10000]
    np.testing.assert_array_equal(default["sel_induction"], explicit["sel_induction"])


@pytest.mark.parametrize("bad", [(5, 6), (-1, 50), (50, 10), (1.0, 50), (3,), "32,127", (True, 50)])
def test_bad_xu2026_vocab_range(bad):
    with pytest.raises((ValueError, TypeError), match="vocab_range"):
        xu2026.PROTOCOL.check_options({"vocab_range": bad})
