"""NaN / inf inputs (issue 9 item 5): statistics are NaN exactly where the output is, in the
float64 reference and in the torch backend (with and without statistics requested)."""

import math

import pytest
import torch
from circuit_stats.kernels import attention_with_stats, attention_with_stats_naive, stats_from_probabilities
from devices import DEVICE
from kernel_cases import assert_stats_close, make_inputs

ALL_STATS = dict(offsets=(0, 1), entropy=True, distance=True, local_window=3, top1=True)


def poison(q, k, v, where):
    """Put a NaN or an inf into one row of q, k or v; returns the poisoned copies."""
    q, k, v = q.clone(), k.clone(), v.clone()
    t = {"q": q, "k": k, "v": v}[where[0]]
    b, h, n = where[1:4]
    t[b, h, n, 0] = where[4]
    return q, k, v


# (tensor, batch, head, position, value); keys at position 6 reach queries 6.. of the kv head
POISONS = [("q", 0, 1, 9, math.nan), ("k", 1, 0, 6, math.nan), ("v", 0, 0, 6, math.nan),
           ("q", 1, 1, 4, math.inf), ("k", 0, 0, 3, -math.inf), ("k", 1, 0, 2, math.nan)]


@pytest.mark.parametrize("where", POISONS, ids=str)
@pytest.mark.parametrize("mods", [{}, {"window": 4}, {"softcap": 2.0, "sinks": True}], ids=str)
@pytest.mark.parametrize("padding", [None, "left"])
def test_statistics_are_nan_exactly_where_the_output_is(where, mods, padding, seed, poison_outputs):
    B, Hq, Hkv, N, D = 2, 2, 1, 14, 16
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, N, N, D, torch.float32, padding)
    if padding:  # keep row 1 partly real so that poisoned keys can be attended
        mask[1, :] = True
        mask[1, :2] = False
    q, k, v = poison(q, k, v, where)
    mods = dict(mods)
    if mods.pop("sinks", False):
        mods["sinks"] = torch.randn(Hq, device=DEVICE)
    kw = dict(key_padding_mask=mask, token_ids=tok, span=torch.tensor([[0, 5], [3, 9]], device=DEVICE),
              **ALL_STATS, **mods)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    out, st = attention_with_stats(q, k, v, backend="torch", **kw)
    _, plain = attention_with_stats(q, k, v, backend="torch", key_padding_mask=mask, **mods)  # lse, sink only
    ref_rows = ref_out.isnan().any(-1)
    rows = out.isnan().any(-1)
    assert torch.equal(rows, ref_rows), f"{where} {mods}: output NaN rows differ from the reference"
    if padding is None and math.isnan(where[4]):  # (padding may hide it; softcap tames an inf)
        assert rows.any(), "the poison must reach some row, or this test checks nothing"
    for stats, what in ((ref, "float64"), (st, "torch"), (plain, "torch, no statistics")):
        for name, t in stats.as_dict().items():
            if name == "top1_index":
                assert (t[rows] == -1).all(), f"{what}: top1_index not -1 on NaN rows"
                continue
            nan = t.isnan() if t.dim() == 3 else t.isnan().all(-1)
            assert torch.equal(nan, rows), f"{what} {where} {mods}: {name} NaN rows {nan.nonzero().tolist()} " \
                                           f"!= output NaN rows {rows.nonzero().tolist()}"
    # the rows that are not NaN still match the reference
    keep = ~rows
    st.mark_nan_rows(rows)  # no-op on the already-NaN rows; compare the rest
    assert_stats_close(st, ref, torch.float32, f"{where} {mods}", N)
    assert (out[keep].double() - ref_out[keep]).abs().max() <= 1e-4


def test_probabilities_with_nan_give_nan_rows():
    p = torch.softmax(torch.randn(1, 1, 5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -math.inf), -1)
    p[0, 0, 3, 1] = math.nan
    p[0, 0, 1, 4] = math.nan  # not attendable by query 1: ignored
    st = stats_from_probabilities(p.double(), entropy=True, top1=True, distance=True, offsets=(1,))
    for name, t in st.as_dict().items():
        if name in ("lse", "top1_index"):
            continue
        bad = t.isnan() if t.dim() == 3 else t.isnan().all(-1)
        assert bad[0, 0].tolist() == [False, False, False, True, False], name
    assert st.top1_index[0, 0].tolist()[3] == -1


@pytest.mark.parametrize("where", POISONS, ids=str)
@pytest.mark.parametrize("mods", [{}, {"window": 4, "softcap": 2.0, "sinks": True}], ids=str)
@pytest.mark.parametrize("padding", [None, "left"])
def test_triton_statistics_are_nan_exactly_where_the_output_is(where, mods, padding, seed, poison_outputs):
    """The same contract for the fused kernel: every statistic, with and without modifiers."""
    B, Hq, Hkv, N, D = 2, 2, 1, 14, 16
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, N, N, D, torch.float32, padding)
    if padding:
        mask[1, :] = True
        mask[1, :2] = False
    q, k, v = poison(q, k, v, where)
    mods = dict(mods)
    if mods.pop("sinks", False):
        mods["sinks"] = torch.randn(Hq, device=DEVICE)
    kw = dict(key_padding_mask=mask, token_ids=tok, probe_keys=torch.tensor([[0, 5], [3, 9]], device=DEVICE),
              span=torch.tensor([[0, 5], [3, 9]], device=DEVICE), **ALL_STATS, **mods)
    ref_out, _ = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    out, st = attention_with_stats(q, k, v, backend="triton", **kw)
    rows, ref_rows = out.isnan().any(-1), ref_out.isnan().any(-1)
    if math.isnan(where[4]):
        assert torch.equal(rows, ref_rows), f"{where}: output NaN rows differ from the reference"
    else:  # an inf can make every score of a row -inf: the kernel then sees no attendable key
        # (output 0, statistics 0, lse -inf) where the reference computes 0/0 = NaN
        assert not (rows & ~ref_rows).any(), f"{where}: NaN rows the reference does not have"
    if padding is None and math.isnan(where[4]):
        assert rows.any(), "the poison must reach some row, or this test checks nothing"
    for name, t in st.as_dict().items():
        if name == "top1_index":
            assert (t[rows] == -1).all(), f"triton {where}: top1_index not -1 on NaN rows"
            continue
        nan = t.isnan() if t.dim() == 3 else t.isnan().all(-1)
        assert torch.equal(nan, rows), f"triton {where} {mods}: {name} NaN rows {nan.nonzero().tolist()} " \
                                       f"!= output NaN rows {rows.nonzero().tolist()}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_a_row_of_minus_inf_scores_gets_zero_token_masses(dtype, seed):
    """An inf in a query whose products with every key are negative makes all its scores -inf:
    the row has no attendable key (output 0, lse -inf), and the token-match band kernel must give
    it induction and duplicate mass 0, not -inf - -inf = NaN (seen in CI at one seed in 32)."""
    B, H, N, D, row = 1, 1, 9, 16, 5
    q, k, v = (torch.randn(B, H, N, D, device=DEVICE, dtype=dtype) for _ in range(3))
    k[..., 0] = -(k[..., 0].abs() + 0.5)  # every key negative on dimension 0
    q[0, 0, row] = 0.5
    q[0, 0, row, 0] = float("inf")  # scores of the row: inf * negative + finite = -inf
    tok = torch.full((B, N), 7, device=DEVICE)  # one token: every earlier key matches
    out, st = attention_with_stats(q, k, v, backend="triton", token_ids=tok, entropy=True)
    assert not out.isnan().any() and (out[0, 0, row] == 0).all()
    for name in ("induction", "duplicate"):
        got = getattr(st, name)[0, 0]
        assert not got.isnan().any(), f"{name}: NaN {got.tolist()}"
        assert got[row] == 0 and (got[row + 1:] > 0).all(), f"{name}: {got.tolist()}"
