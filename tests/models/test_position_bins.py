"""record(position_bins=...): statistics per (layer, head, bin of query position), checked against
eager attention probabilities binned by an independent position count."""

import math

import pytest
import torch
from circuit_stats.models import tiny_model
from circuit_stats.models.positions import LOG2_EDGES, bin_edges
from circuit_stats.profiling.prefill import cache_keyword
from hf_helpers import model_pair, positions_from_first_real_token, random_batch
from transformers import DynamicCache

import circuit_stats
from circuit_stats.kernels import stats_from_probabilities

pytestmark = pytest.mark.hf


@torch.no_grad()
def eager_binned_means(eager, ids, mask, edges, offsets=(1,)):
    """{stat: [layers, heads, bins]} from eager probabilities; NaN for an empty bin."""
    out = eager(ids, attention_mask=mask, output_attentions=True)
    pos = positions_from_first_real_token(mask)
    K = len(edges) - 1
    res = {}
    for probs in out.attentions:
        st = stats_from_probabilities(probs.double(), key_padding_mask=mask.bool(), offsets=offsets,
                                      token_ids=ids, entropy=True)
        cols = {"sink": st.sink, "offset_1": st.offsets[..., 0], "induction": st.induction,
                "duplicate": st.duplicate, "entropy": st.entropy}
        for name, val in cols.items():
            per_bin = torch.full((val.shape[1], K), math.nan, dtype=torch.float64)
            for k in range(K):
                sel = (pos >= edges[k]) & (pos < edges[k + 1]) & mask.bool()
                if sel.any():
                    per_bin[:, k] = (val * sel[:, None]).sum((0, 2)) / sel.sum()
            res.setdefault(name, []).append(per_bin)
    return {k: torch.stack(v).float() for k, v in res.items()}


def record_binned(model, ids, mask, position_bins, **kw):
    with torch.no_grad(), circuit_stats.record(model, offsets=(1,), token_match=True, entropy=True,
                                               position_bins=position_bins, **kw) as rec:
        model(ids, attention_mask=mask)
    return rec


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("family", ["pythia", "llama-gqa"])
def test_binned_means_match_eager(family, padding, seed):
    """Binning happens in record() after the kernel, so one backend (the CPU default) suffices."""
    ours, eager = model_pair(family, seed=seed % 1000)
    ids, mask = random_batch(B=3, N=37, padding=padding, seed=seed)
    for spec in ("log2", [0, 3, 10, 20, 37]):
        edges = bin_edges(spec)
        want = eager_binned_means(eager, ids, mask, edges)
        got = record_binned(ours, ids, mask, spec).tensors()
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == want[name].shape
            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, equal_nan=True,
                                       msg=f"{spec} {name}")
        last = [k for k in range(len(edges) - 1) if not torch.isnan(got["entropy"][0, 0, k])][-1]
        assert (got["entropy"][..., last] - got["entropy"][..., 0]).abs().max() > 0.1, "bins should differ"


def test_left_padding_counts_from_the_first_real_token(seed):
    """A left-padded row gives, bin for bin, what the same tokens give alone."""
    model = tiny_model("pythia", seed=seed % 1000, initializer_range=0.3)
    ids, mask = random_batch(B=3, N=30, padding="left", seed=seed)
    assert (mask[:, 0] == 0).any(), "the test needs a left-padded row"
    rec = record_binned(model, ids, mask, "log2", per_sample=True)
    batched = rec.per_sample()
    for b in range(ids.shape[0]):
        alone = record_binned(model, ids[b][mask[b].bool()][None], None, "log2").tensors()
        for name, val in alone.items():
            torch.testing.assert_close(batched[name][b], val, atol=2e-5, rtol=1e-4, equal_nan=True,
                                       msg=f"row {b} {name}")


def test_bins_pool_to_the_unbinned_means(seed):
    model = tiny_model("olmo", seed=seed % 1000, initializer_range=0.3)
    ids, mask = random_batch(B=2, N=41, padding="right", seed=seed)
    binned = record_binned(model, ids, mask, "log2")
    with torch.no_grad(), circuit_stats.record(model, offsets=(1,), token_match=True, entropy=True) as rec:
        model(ids, attention_mask=mask)
    n = binned.query_counts()["sink"].float()
    assert n.sum() == mask.sum()
    for name, val in rec.tensors().items():
        pooled = (binned.tensors()[name].nan_to_num() * n).sum(-1) / n.sum()
        torch.testing.assert_close(pooled, val, atol=1e-5, rtol=1e-4, msg=name)


def test_cache_extending_forwards_continue_positions(seed):
    """Prefill in three chunks through a KV cache = one forward, bin for bin."""
    model = tiny_model("llama-gqa", seed=seed % 1000, initializer_range=0.3)
    ids, _ = random_batch(B=2, N=45, seed=seed)
    once = record_binned(model, ids, None, [0, 5, 17, 30, math.inf]).tensors()
    with torch.no_grad(), circuit_stats.record(model, offsets=(1,), token_match=True, entropy=True,
                                               position_bins=[0, 5, 17, 30, math.inf]) as rec:
        cache = DynamicCache()
        for a, b in ((0, 11), (11, 31), (31, 45)):
            model(ids[:, a:b], **{cache_keyword(model): cache}, use_cache=True)
    for name, val in rec.tensors().items():
        torch.testing.assert_close(val, once[name], atol=2e-5, rtol=1e-4, msg=name)


def test_queries_outside_the_edges_are_not_counted(seed):
    model = tiny_model("pythia", seed=seed % 1000)
    ids, mask = random_batch(B=2, N=20, seed=seed)
    rec = record_binned(model, ids, mask, [4, 8, 12])
    assert rec.query_counts()["sink"].tolist() == [8.0, 8.0]
    assert rec.bins == [(4, 8), (8, 12)]
    df = rec.summary()
    assert list(df.columns[:6]) == ["layer", "head", "bin", "pos_lo", "pos_hi", "n_queries"]
    assert len(df) == 2 * 4 * 2 and not df.isna().any().any()


def test_summary_skips_empty_bins_and_marks_the_open_one(seed):
    model = tiny_model("pythia", seed=seed % 1000)
    ids = torch.randint(3, 24, (1, 9))
    df = record_binned(model, ids, None, "log2").summary()
    assert sorted(df["bin"].unique()) == [0, 1, 2, 3, 4]  # positions 0..8 reach [8, 16)
    assert df.loc[df["bin"] == 4, "n_queries"].eq(1).all()
    assert LOG2_EDGES[-1] == math.inf and df["pos_hi"].max() == 16


@pytest.mark.parametrize("spec, err", [
    ("linear", ValueError), ([3], ValueError), ([0, 4, 4], ValueError), ([-1, 4], ValueError),
    ([0, 2.5], TypeError), ([0, math.inf, 9], TypeError), (torch.tensor([0, 4]), TypeError), (8, TypeError),
])
def test_bad_position_bins_are_refused_before_any_forward(spec, err):
    model = tiny_model("pythia")
    with pytest.raises(err, match="position_bins"):
        with circuit_stats.record(model, position_bins=spec):
            pass


@torch.no_grad()
def test_new_statistics_binned_match_eager(seed):
    """distance, local, top1_prob and span through record(), per bin, vs eager probabilities;
    last_top1_index() is the eager argmax of the last query."""
    ours, eager = model_pair("llama-gqa", seed=seed % 1000)
    ids, mask = random_batch(B=3, N=33, padding="left", seed=seed)
    span = torch.tensor([[20, 26], [14, 30], [25, 33]])
    edges = bin_edges([0, 2, 8, 20, math.inf])
    pos = positions_from_first_real_token(mask)
    out = eager(ids, attention_mask=mask, output_attentions=True)
    with circuit_stats.record(ours, position_bins=[0, 2, 8, 20, math.inf], distance=True, local_window=4,
                              top1=True, span=span) as rec:
        ours(ids, attention_mask=mask)
    got = rec.tensors()
    for layer, probs in enumerate(out.attentions):
        st = stats_from_probabilities(probs.double(), key_padding_mask=mask.bool(), distance=True, local_window=4,
                                      top1=True, span=span)
        for name, val in (("distance", st.distance), ("local", st.local), ("top1_prob", st.top1_prob),
                          ("span", st.span)):
            for k in range(len(edges) - 1):
                sel = (pos >= edges[k]) & (pos < edges[k + 1]) & mask.bool()
                want = (val * sel[:, None]).sum((0, 2)) / sel.sum()
                torch.testing.assert_close(got[name][layer, :, k], want.float(), atol=2e-5, rtol=1e-4,
                                           msg=f"layer {layer} {name} bin {k}")
        top = probs[:, :, -1].double().argmax(-1)  # [B, H]; rows of this test have no ties
        assert torch.equal(rec.last_top1_index()[:, layer], top)
    assert got["distance"][..., -1].min() > 1 and got["span"].max() > 0.01


def test_generate_with_left_padding_bins_like_one_forward(seed):
    """Prefill + decode steps of a left-padded batch = one forward over the final tokens, per bin."""
    model = tiny_model("pythia", seed=seed % 1000, initializer_range=0.3)
    ids, mask = random_batch(B=2, N=12, padding="left", seed=seed)
    kw = dict(offsets=(1,), entropy=True, distance=True, position_bins=[0, 3, 9, 14, math.inf])
    with torch.no_grad(), circuit_stats.record(model, **kw) as rec:
        got = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=1)
    full_mask = torch.cat([mask, torch.ones(2, got.shape[1] - ids.shape[1], dtype=mask.dtype)], 1)[:, :-1]
    with torch.no_grad(), circuit_stats.record(model, **kw) as once:
        model(got[:, :-1], attention_mask=full_mask)
    for name, val in once.tensors().items():
        torch.testing.assert_close(rec.tensors()[name], val, atol=2e-5, rtol=1e-4, equal_nan=True, msg=name)
    assert torch.equal(rec.query_counts()["sink"], once.query_counts()["sink"])
