"""``key_mass``: the attention each key receives (column sums of the probabilities), in every
backend vs the float64 reference, and the reference vs an independent softmax."""

import math

import pytest
import torch
from circuit_stats.kernels import SideInputs, attention_with_stats, attention_with_stats_naive
from circuit_stats.kernels import chunked, triton_decode
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels.triton_attention import attention_with_stats_triton
from circuit_stats.kernels.triton_key_mass import add_key_mass
from devices import DEVICE, KERNEL_DTYPES
from kernel_cases import CASES, STAT_TOL, capped_score_error, make_inputs, reference_probabilities

BACKENDS = ["torch", "triton"]
MODIFIERS = {"plain": {}, "window": dict(window=6), "softcap": dict(softcap=2.5), "sinks": dict(sinks=True),
             "all": dict(window=5, softcap=3.0, sinks=True)}
WEIGHTS = ("none", "float", "bool")


def modifier_kwargs(name: str, Hq: int) -> dict:
    kw = dict(MODIFIERS[name])
    if kw.pop("sinks", False):
        kw["sinks"] = torch.randn(Hq, device=DEVICE) * 2  # some heads dump most mass on the sink
    return kw


def query_weights(kind: str, B: int, Nq: int):
    """None, random floats in [0.5, 2) or a bool mask; every third row weighs 0 (the first row
    always counts, so a decode step is counted)."""
    if kind == "none":
        return None
    counted = torch.arange(Nq, device=DEVICE) % 3 != 1
    if kind == "bool":
        return counted[None].expand(B, Nq).clone()
    return (0.5 + 1.5 * torch.rand(B, Nq, device=DEVICE)) * counted


def assert_key_mass_close(got: torch.Tensor, want: torch.Tensor, dtype, what: str, softcap=None) -> None:
    """Same shape, float32, finite where the reference is; close relative above 1 (a key's mass
    sums up to Nq probabilities, each moved by a factor within ``e^(+-2 eps)`` where the kernel
    caps approximately: ``capped_score_error``)."""
    assert got.shape == want.shape and got.dtype == torch.float32, f"{what}: {got.shape} {got.dtype}"
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN pattern"
    fin = want.isfinite()
    err = ((got.double()[fin] - want[fin]).abs() / want[fin].abs().clamp(min=1)).max().item()
    tol = STAT_TOL[dtype] + math.expm1(2 * capped_score_error(dtype, softcap))
    assert err <= tol, f"{what}: key_mass off by {err:.3g} (tol {tol:.3g})"


def rotated_weights(case: str, modifier: str) -> str:
    """The query-weight kind for a (case, modifier) pair: rotating through ``WEIGHTS`` so that
    every kind meets every case and every modifier, in a third of the full product's runs."""
    return WEIGHTS[(list(CASES).index(case) + list(MODIFIERS).index(modifier)) % len(WEIGHTS)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("modifier", list(MODIFIERS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_key_mass_matches_float64(backend, modifier, case, dtype, seed, poison_outputs):
    weights = rotated_weights(case, modifier)
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    q, k, v, _, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 32, dtype, padding)
    kw = dict(key_padding_mask=mask, **modifier_kwargs(modifier, Hq))
    w = query_weights(weights, B, Nq)
    ref_kw = dict(kw, sinks=kw["sinks"].double()) if "sinks" in kw else kw
    _, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), key_mass=True, key_mass_queries=w,
                                        **ref_kw)
    out, stats = attention_with_stats(q, k, v, backend=backend, key_mass=True, key_mass_queries=w, entropy=True, **kw)
    what = f"{backend} {case} {modifier} weights={weights} {dtype} seed={seed}"
    assert not stats.key_mass.isnan().any(), f"{what}: NaN in key_mass"
    assert_key_mass_close(stats.key_mass, ref.key_mass, dtype, what, kw.get("softcap"))
    # the rest of the statistics are those of a call without key_mass
    out_plain, plain = attention_with_stats(q, k, v, backend=backend, entropy=True, **kw)
    assert torch.equal(out, out_plain) and stats.as_dict().keys() == {*plain.as_dict(), "key_mass"}
    for name, val in plain.as_dict().items():
        assert torch.equal(getattr(stats, name), val), f"{what}: {name} changed by key_mass"
    if padding:  # a padded key receives nothing; the fully padded sequence's keys neither
        assert (stats.key_mass.transpose(0, 1)[:, ~mask] == 0).all(), f"{what}: mass on padded keys"
        assert (stats.key_mass[-1] == 0).all()


@pytest.mark.parametrize("modifier", ["plain", "all"])
@pytest.mark.parametrize("case", ["gqa-odd", "left-pad", "decode-left-pad"])
def test_reference_is_the_weighted_column_sum_of_a_softmax(modifier, case, seed):
    """The float64 definition vs an independent softmax (``reference_probabilities``)."""
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    q, k, v, _, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 32, torch.float64, padding)
    kw = modifier_kwargs(modifier, Hq)
    w = query_weights("float", B, Nq).double()
    _, ref = attention_with_stats_naive(q, k, v, key_padding_mask=mask, key_mass=True, key_mass_queries=w, **kw)
    p = reference_probabilities(q, k, mask, **kw)
    torch.testing.assert_close(ref.key_mass, torch.einsum("bhqk,bq->bhk", p, w), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_sinks", [False, True])
def test_key_mass_sums_to_the_rows_mass(backend, with_sinks, seed):
    """Every row with a key hands out 1 (less its learned sink's share): summed over the keys,
    key_mass is the weighted count of such rows."""
    B, Hq, Hkv, Nq, Nk, _ = CASES["decode-left-pad"]
    q, k, v, _, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 32, torch.float32, "left")
    sinks = torch.randn(Hq, device=DEVICE) if with_sinks else None
    w = query_weights("float", B, Nq)
    _, st = attention_with_stats(q, k, v, key_padding_mask=mask, sinks=sinks, key_mass=True, key_mass_queries=w,
                                 backend=backend)
    q_pos = torch.arange(Nk - Nq, Nk, device=DEVICE)
    has_key = (mask.cumsum(-1)[:, q_pos] > 0)[:, None]  # [B, 1, Nq]
    handed_out = 1 - st.learned_sink if sinks is not None else torch.ones_like(st.lse)
    want = (w[:, None] * handed_out * has_key).sum(-1)
    assert (~has_key).any() and has_key.any()
    torch.testing.assert_close(st.key_mass.sum(-1), want, atol=1e-5, rtol=1e-5)


def test_chunked_queries_and_parallel_heads_add_up(monkeypatch, seed, poison_outputs):
    """Several query chunks (a small chunk budget) and one thread per head give the same key
    masses as one chunk."""
    B, Hq, Hkv, Nq, Nk = 2, 4, 2, 61, 70
    q, k, v, _, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 32, torch.float32, "right")
    w = query_weights("float", B, Nq)
    kw = dict(key_padding_mask=mask, key_mass=True, key_mass_queries=w, window=23, backend="torch")
    _, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), key_padding_mask=mask, window=23,
                                        key_mass=True, key_mass_queries=w)
    _, whole = attention_with_stats(q, k, v, **kw)
    monkeypatch.setattr(chunked, "CHUNK_BUDGET_ELEMENTS", 16 * 20 * B)  # 16-row chunks
    _, parts = attention_with_stats(q, k, v, **kw)
    monkeypatch.setattr(chunked, "PARALLEL_MIN_SCORES", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, parallel = attention_with_stats(q, k, v, **kw)
    finally:
        torch.set_num_threads(threads)
    for what, st in (("one chunk", whole), ("chunks", parts), ("parallel heads", parallel)):
        assert_key_mass_close(st.key_mass, ref.key_mass, torch.float32, what)


@pytest.mark.parametrize("block", [(16, 16), (16, 32), (32, 16)])
# windows 18 and 34 put a window's last query one row into a query block, 47 its left edge one
# row before a block boundary (for 16- and 32-row query tiles)
@pytest.mark.parametrize("window", [None, 1, 18, 34, 47])
@pytest.mark.parametrize("shift", [0, 13, 30])
def test_triton_tiles_do_not_change_results(block, window, shift, seed, poison_outputs):
    """Key and query tiles move the kernel's stage bounds (the causal diagonal, a window's edges,
    blocks of padding only, ragged ends) across query blocks; ``shift = Nk - Nq`` moves the
    diagonal against the tiles (30: the diagonal leaves a query block one row from its end)."""
    B, Hq, Hkv, Nq = 4, 2, 1, 70
    Nk = Nq + shift
    q, k, v, _, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 24, torch.float32, "left")
    mask[:3] = True  # sequence 2 unpadded, sequence 3 all padding
    mask[0, :31] = False  # the first real key is the last key of a 16- or 32-key block
    mask[1, :47] = False  # blocks of padding only, then a block that starts with padding
    w = query_weights("float", B, Nq)
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, query_weight=w)
    request = StatsRequest(scale=24 ** -0.5, window=window, key_mass=True)
    _, stats = attention_with_stats_triton(q, k, v, request, side)
    add_key_mass(q, k, request, side, stats, block=block)
    _, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), key_padding_mask=mask, window=window,
                                        key_mass=True, key_mass_queries=w)
    assert_key_mass_close(stats.key_mass, ref.key_mass, torch.float32, f"block {block} window {window} shift {shift}")


@pytest.mark.parametrize("n_queries", [1, 3])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_key_mass_after_split_decode(n_queries, dtype, seed, poison_outputs):
    """Decode over long keys runs the split-key kernel, then the key-mass pass from its lse."""
    B, Hq, Hkv, Nk = 2, 4, 2, 600
    q, k, v, _, mask = make_inputs(B, Hq, Hkv, n_queries, Nk, 32, dtype, "left")
    assert triton_decode.decode_split_len(q, k) is not None
    kw = dict(key_padding_mask=mask, window=450, sinks=torch.randn(Hq, device=DEVICE), key_mass=True)
    _, stats = attention_with_stats(q, k, v, backend="triton", **kw)
    _, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **dict(kw, sinks=kw["sinks"].double()))
    assert_key_mass_close(stats.key_mass, ref.key_mass, dtype, f"split decode Nq={n_queries} {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_rows_count_only_with_weight(backend, seed):
    """A NaN query row that counts makes its head's key_mass NaN at every key; with weight 0 it
    changes nothing; other heads are untouched."""
    B, Hq, Hkv, Nq, Nk = 2, 2, 1, 9, 12
    q, k, v, _, _ = make_inputs(B, Hq, Hkv, Nq, Nk, 16, torch.float32, None)
    q[0, 1, 4] = math.nan
    w = torch.ones(B, Nq, device=DEVICE)
    _, counted = attention_with_stats(q, k, v, key_mass=True, key_mass_queries=w, backend=backend)
    assert counted.key_mass[0, 1].isnan().all()
    assert not counted.key_mass[0, 0].isnan().any() and not counted.key_mass[1].isnan().any()
    w[0, 4] = 0
    _, skipped = attention_with_stats(q, k, v, key_mass=True, key_mass_queries=w, backend=backend)
    _, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), key_mass=True, key_mass_queries=w)
    assert not skipped.key_mass.isnan().any()
    assert_key_mass_close(skipped.key_mass, ref.key_mass, torch.float32, "weight 0 on the NaN row")
    assert skipped.lse[0, 1, 4].isnan()  # the row's own statistics still say NaN


@pytest.mark.parametrize("backend", BACKENDS)
def test_side_inputs_carry_the_query_weight(backend, seed):
    B, Hq, Nq, Nk = 2, 2, 7, 11
    q, k, v, _, mask = make_inputs(B, Hq, Hq, Nq, Nk, 16, torch.float32, "left")
    w = query_weights("bool", B, Nq)
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, query_weight=w)
    assert side.query_weight.dtype == torch.float32
    _, via_side = attention_with_stats(q, k, v, side_inputs=side, key_mass=True, backend=backend)
    _, direct = attention_with_stats(q, k, v, key_padding_mask=mask, key_mass=True, key_mass_queries=w,
                                     backend=backend)
    assert torch.equal(via_side.key_mass, direct.key_mass)


def test_bad_key_mass_arguments_are_refused():
    q = torch.randn(2, 2, 5, 8, device=DEVICE)
    ok = torch.ones(2, 5, device=DEVICE)
    bad = [
        (dict(key_mass="yes"), TypeError, "key_mass must be a bool"),
        (dict(key_mass_queries=ok), ValueError, "pass key_mass=True"),
        (dict(key_mass=True, key_mass_queries=ok[:, :4]), ValueError, r"key_mass_queries.*shape \(2, 5\)"),
        (dict(key_mass=True, key_mass_queries=ok[:1]), ValueError, r"key_mass_queries.*shape \(2, q_len\)"),
        (dict(key_mass=True, key_mass_queries=ok.long()), TypeError, "key_mass_queries.*float or bool"),
        (dict(key_mass=True, key_mass_queries=[[1.0] * 5] * 2), TypeError, "key_mass_queries.*float or bool"),
        (dict(key_mass=True, key_mass_queries=-ok), ValueError, "key_mass_queries.*>= 0"),
        (dict(key_mass=True, key_mass_queries=ok * math.nan), ValueError, "key_mass_queries.*finite"),
        (dict(key_mass=True, key_mass_queries=ok * math.inf), ValueError, "key_mass_queries.*finite"),
    ]
    for kwargs, err, match in bad:
        with pytest.raises(err, match=match):
            attention_with_stats(q, q, q, **kwargs)
    side = SideInputs.build(batch=2, k_len=5, device=q.device)
    with pytest.raises(ValueError, match=r"\['key_mass_queries'\] inside side_inputs"):
        attention_with_stats(q, q, q, side_inputs=side, key_mass=True, key_mass_queries=ok)
    side = SideInputs.build(batch=2, k_len=5, device=q.device, query_weight=ok[:, :3])
    with pytest.raises(ValueError, match=r"key_mass_queries.*shape \(2, 5\)"):
        attention_with_stats(q, q, q, side_inputs=side, key_mass=True)
