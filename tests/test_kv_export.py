"""key_scores(): H2O-style per-key scores of one document (and SnapKV's observation window),
against column sums of HF eager attention probabilities on the bundled model."""

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import circuit_stats
from circuit_stats.demo.series import demo_series_dir

pytestmark = pytest.mark.hf

PATH = demo_series_dir() / "checkpoint-1600"


@pytest.fixture(scope="module")
def bundled():
    return tuple(AutoModelForCausalLM.from_pretrained(PATH, attn_implementation=impl, dtype=torch.float32).eval()
                 for impl in ("circuit_stats", "eager"))


def document(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (int(torch.randint(20, 40, (1,), generator=g)),), generator=g)


@torch.no_grad()
def eager_scores(eager, ids: torch.Tensor, window=None) -> torch.Tensor:
    """``[L, H, N]``: each key's attention summed over the (last ``window``) queries."""
    probs = torch.stack([a[0].double() for a in eager(ids[None], output_attentions=True).attentions])  # [L, H, N, N]
    N = ids.shape[0]
    return probs[:, :, N - (window or N):, :].sum(2)


@pytest.mark.parametrize("window, chunk_size", [(None, None), (None, 7), (5, None), (5, 4), (1, 9)])
def test_key_scores_are_eager_column_sums(bundled, seed, window, chunk_size):
    ours, eager = bundled
    ids = document(seed)
    got = circuit_stats.key_scores(ours, ids, window=window, chunk_size=chunk_size)
    want = eager_scores(eager, ids, window)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)
    if window is not None:  # keys after the window's first query are seen by fewer queries only
        N = ids.shape[0]
        assert torch.allclose(got[..., N - window:].sum(-1) + got[..., : N - window].sum(-1),
                              torch.full(got.shape[:2], float(window)), atol=1e-4)


def test_key_scores_write_a_parquet_table(bundled, seed, tmp_path):
    ours, _ = bundled
    ids = document(seed)
    path = tmp_path / "scores.parquet"
    scores = circuit_stats.key_scores(ours, ids[None], window=6, out=path)
    df = pd.read_parquet(path)
    assert list(df.columns) == ["layer", "head", "position", "token_id", "score"]
    L, H, N = scores.shape
    assert len(df) == L * H * N
    row = df[(df["layer"] == 1) & (df["head"] == 2) & (df["position"] == 3)].iloc[0]
    assert row["token_id"] == int(ids[3]) and row["score"] == pytest.approx(float(scores[1, 2, 3]))
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]  # no temporary file left


@pytest.mark.parametrize("kw, error, match", [
    (dict(input_ids=torch.zeros(2, 5, dtype=torch.long)), ValueError, "one document"),
    (dict(input_ids=torch.zeros(0, dtype=torch.long)), ValueError, "one document"),
    (dict(input_ids=torch.zeros(5)), TypeError, "integer tensor"),
    (dict(window=0), ValueError, "window must be an int >= 1 and <= 5"),
    (dict(window=6), ValueError, "window must be an int >= 1 and <= 5"),
    (dict(chunk_size=True), ValueError, "chunk_size must be an int >= 1"),
    (dict(out="scores.csv"), ValueError, "out must be a .parquet path"),
])
def test_bad_arguments_are_refused_before_any_forward(bundled, kw, error, match, monkeypatch):
    ours, _ = bundled
    monkeypatch.setattr(ours, "forward", lambda *a, **k: pytest.fail("no forward may run"))
    kw = {"input_ids": torch.tensor([65, 66, 67, 68, 69]), **kw}
    with pytest.raises(error, match=match):
        circuit_stats.key_scores(ours, **kw)
