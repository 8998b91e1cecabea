"""Split-key decode kernel (kernels/triton_decode.py) vs the float64 materialised reference."""

import pytest
import torch
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels import SideInputs, attention_with_stats, attention_with_stats_naive
from circuit_stats.kernels import triton_decode
from circuit_stats.kernels.triton_decode import attention_with_stats_decode, plan_split_len
from devices import DEVICE, KERNEL_DTYPES

STAT_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3}
OUT_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}

# (B, Hq, Hkv, Nq, Nk, D, padding, split_len): every case has several splits and a ragged last one.
CASES = {
    "mqa-nq1": (2, 4, 1, 1, 77, 16, None, 32),  # splits 32 + 32 + 13
    "gqa-nq3-left-pad-d40": (3, 4, 2, 3, 70, 40, "left", 32),  # D padded to 64 on chip
    "mha-nq16": (1, 2, 2, 16, 61, 32, None, 16),  # the causal tail spans the last two splits
    "mqa-rows-over-one-block": (2, 8, 1, 3, 50, 16, "left", 16),  # 24 packed rows: two row blocks
}


def make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, padding, vocab=4):
    """Random q/k/v laid out as transformers hands them over ([B, N, H, D] transposed), token ids
    from a small vocabulary (many matches), and for left padding: one row whose first key lies in
    a later split, one row with no attendable key."""
    q = torch.randn(B, Nq, Hq, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    k = torch.randn(B, Nk, Hkv, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    v = torch.randn(B, Nk, Hkv, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    q = q * (1 + 3 * torch.rand(B, Hq, Nq, 1, device=DEVICE, dtype=dtype))  # some sharp rows
    tok = torch.randint(0, vocab, (B, Nk), device=DEVICE)
    tok[:, -3:] = tok[:, -3:-2]  # planted matches in every row's last keys (attendable, Nq <= length):
    # the last query duplicates the two keys before it and is predicted by key Nk - 2 (induction)
    mask = None
    if padding == "left":
        mask = torch.ones(B, Nk, dtype=torch.bool, device=DEVICE)
        lengths = torch.randint(1, Nk, (B,)).tolist()
        lengths[0] = int(torch.randint(Nq, Nk // 3 + Nq, ()))  # first key in a later split
        lengths[-1] = 0
        for b, n in enumerate(lengths):
            mask[b, : Nk - n] = False
    return q, k, v, tok, mask


def run_both(q, k, v, tok, mask, offsets, probes, split_len):
    B, _, _, D = q.shape
    Nk = k.shape[2]
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=tok,
                            probe_keys=probes)
    got = attention_with_stats_decode(q, k, v, StatsRequest(scale=D ** -0.5, offsets=offsets, entropy=True), side,
                                      split_len=split_len)
    want = attention_with_stats_naive(q.double(), k.double(), v.double(), key_padding_mask=mask, offsets=offsets,
                                      probe_keys=probes, token_ids=tok, entropy=True)
    return got, want


def check_close(got, want, dtype, what):
    (out, stats), (ref_out, ref) = got, want
    assert out.dtype == dtype and out.shape == ref_out.shape, what
    assert not torch.isnan(out).any(), f"{what}: NaN in output"
    err = (out.double() - ref_out).abs().max().item()
    assert err <= OUT_TOL[dtype], f"{what}: output off by {err:.3g}"
    assert set(stats.as_dict()) == set(ref.as_dict()), what
    for name, r in ref.as_dict().items():
        val = getattr(stats, name)
        assert val.dtype == torch.float32 and val.shape == r.shape, f"{what}: {name} {tuple(val.shape)}"
        if name == "lse":
            assert torch.equal(torch.isinf(val), torch.isinf(r)), f"{what}: lse inf pattern"
            val, r = val[torch.isfinite(r)], r[torch.isfinite(r)]
        assert not torch.isnan(val).any(), f"{what}: NaN in {name}"
        err = (val.double() - r).abs().max().item()
        assert err <= STAT_TOL[dtype], f"{what}: {name} off by {err:.3g} (tol {STAT_TOL[dtype]})"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_split_decode_matches_float64(case, dtype, seed, poison_outputs):
    B, Hq, Hkv, Nq, Nk, D, padding, split_len = CASES[case]
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, padding)
    # Offsets whose keys fall in different splits, and one that never exists.
    offsets = (0, 1, split_len - 1, split_len + 3, Nk + 2)
    probes = torch.randint(0, Nk, (B, 3), device=DEVICE)
    probes[:, 0] = Nk - 1  # the last key: attendable only by the last query
    probes[:, 1] = 0  # the first split (padding on left-padded rows)
    got, want = run_both(q, k, v, tok, mask, offsets, probes, split_len)
    check_close(got, want, dtype, f"{case} {dtype} seed={seed}")
    assert want[1].induction.abs().sum() > 0 and want[1].duplicate.abs().sum() > 0  # matches exist
    if padding:  # the row with no attendable key: zeros, never NaN
        out, stats = got
        assert (out[-1] == 0).all() and (stats.sink[-1] == 0).all() and (stats.entropy[-1] == 0).all()
        assert torch.isneginf(stats.lse[-1]).all()


def test_split_length_does_not_change_results(seed, poison_outputs):
    """The combine is exact: one split, two splits and many splits agree to float32 rounding."""
    B, Hq, Hkv, Nq, Nk, D = 1, 2, 1, 2, 72, 16
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, D, torch.float32, "left")
    mask[0, :20] = False
    mask[0, 20:] = True  # splits of 16: the first is empty, the second partly padded
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=tok,
                            probe_keys=torch.tensor([[25, 70]], device=DEVICE))
    request = StatsRequest(scale=0.3, offsets=(1, 30), entropy=True)
    out1, s1 = attention_with_stats_decode(q, k, v, request, side, split_len=80)
    for split_len in (16, 48):
        out, s = attention_with_stats_decode(q, k, v, request, side, split_len=split_len)
        torch.testing.assert_close(out, out1, atol=2e-6, rtol=1e-5)
        for name, val in s1.as_dict().items():
            torch.testing.assert_close(getattr(s, name), val, atol=2e-6, rtol=1e-5, msg=f"{name} split {split_len}")


def test_hook_routes_long_decode_to_split_kernel(seed, monkeypatch):
    """attention_with_stats(backend="triton") sends Nq <= 16 over long keys to the split kernel."""
    calls = []
    real = triton_decode.attention_with_stats_decode

    def spy(*args, **kwargs):
        calls.append(kwargs["split_len"])
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_decode, "attention_with_stats_decode", spy)
    B, Hq, Hkv, Nq, Nk, D = 1, 2, 1, 1, 530, 16
    q, k, v, tok, _ = make_inputs(B, Hq, Hkv, Nq, Nk, D, torch.float32, None)
    out, stats = attention_with_stats(q, k, v, backend="triton", offsets=(1,), token_ids=tok, entropy=True)
    assert len(calls) == 1 and calls[0] < Nk, calls
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), offsets=(1,), token_ids=tok,
                                              entropy=True)
    check_close((out, stats), (ref_out, ref), torch.float32, f"hook seed={seed}")

    calls.clear()
    attention_with_stats(q[:, :, :1], k[:, :, :40], v[:, :, :40], backend="triton")  # short: not split
    assert calls == []


def test_plan_split_len():
    # Few (batch, head) programs and long keys: split into aligned pieces that fill the GPU.
    s = plan_split_len(batch=1, q_heads=32, kv_heads=8, n_queries=1, n_keys=32768, sm_count=132)
    assert s is not None and s % triton_decode.SPLIT_ALIGN == 0
    n = -(-32768 // s)
    assert 2 <= n <= triton_decode.MAX_SPLITS and 8 * n >= 132  # at least ~one program per SM
    assert s >= triton_decode.MIN_SPLIT_KEYS
    # Not worthwhile: prefill-sized query blocks, short keys, or a GPU already full of programs.
    assert plan_split_len(1, 32, 8, 17, 32768, 132) is None
    assert plan_split_len(1, 32, 8, 1, 300, 132) is None
    assert plan_split_len(64, 32, 32, 1, 4096, 132) is None
    # Never more than MAX_SPLITS, never a split under MIN_SPLIT_KEYS.
    s = plan_split_len(1, 1, 1, 1, 10 ** 6, 10 ** 4)
    assert -(-10 ** 6 // s) <= triton_decode.MAX_SPLITS
    s = plan_split_len(1, 1, 1, 1, 1024, 10 ** 4)
    assert s >= triton_decode.MIN_SPLIT_KEYS and -(-1024 // s) >= 2


@pytest.mark.parametrize("split_len, accepted", [(32, True), (16, True), (48, True), (24, False)])
def test_split_len_on_the_gpu_path_needs_a_dividing_key_tile(monkeypatch, split_len, accepted):
    """As on a GPU (no interpreter tile, the autotuner picks): a split length that some key tile
    divides reaches the tuner (32 was refused there because the check assumed the 128-key tile),
    with the largest dividing tile in its key; one that none divides is refused before any launch."""
    seen = []
    tuner = triton_decode.SPLIT_TUNER
    monkeypatch.setattr(triton_decode, "interpreting", lambda: False)
    monkeypatch.setattr(triton_decode, "SPLIT_TUNER", type("Recorder", (), dict(
        arg_names=tuner.arg_names, run=lambda self, *a, grid, warmup, **kw: seen.append(kw)))())
    monkeypatch.setattr(triton_decode, "_decode_combine", type("Combine", (), dict(
        arg_names=triton_decode._decode_combine.arg_names, run=lambda self, *a, **k: None))())
    q, k, v, _, _ = make_inputs(1, 4, 2, 1, 100, 64, torch.float16, None)
    side = SideInputs.build(batch=1, k_len=100, device=q.device)
    if not accepted:
        with pytest.raises(ValueError, match="split_len must be a positive multiple of a key tile"):
            attention_with_stats_decode(q, k, v, StatsRequest(scale=0.125), side, split_len=split_len)
        assert seen == []
        return
    attention_with_stats_decode(q, k, v, StatsRequest(scale=0.125), side, split_len=split_len)
    (kw,) = seen
    assert kw["split_len"] == split_len and kw["MAX_KEY_TILE"] == max(t for t in (16, 32, 64, 128) if split_len % t == 0)
    assert set(tuner.keys) <= set(kw)


def test_bad_split_len_and_long_queries_are_refused():
    q, k, v, _, _ = make_inputs(1, 2, 2, 2, 40, 16, torch.float32, None)
    side = SideInputs.build(batch=1, k_len=40, device=q.device)
    request = StatsRequest(scale=0.25)
    with pytest.raises(ValueError, match="split_len"):
        attention_with_stats_decode(q, k, v, request, side, split_len=24)  # not a multiple of the 16-key tile
    q17, k17, v17, _, _ = make_inputs(1, 2, 2, 17, 40, 16, torch.float32, None)
    with pytest.raises(ValueError, match="q length"):
        attention_with_stats_decode(q17, k17, v17, request, side)


# Every case with two modifier sets, every modifier set with two cases.
MODIFIER_CASES = [(case, mods) for i, case in enumerate(CASES) for mods in (
    [{}, {"window": 21}, {"softcap": 3.0, "sinks": True}, {"window": 40, "softcap": 2.0, "sinks": True}] * 2)[2 * i:2 * i + 2]]


@pytest.mark.parametrize("case, mods", MODIFIER_CASES, ids=str)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_split_decode_long_context_statistics_and_modifiers(case, dtype, mods, seed, poison_outputs):
    """distance, local, top1 and span, and windows, softcaps and learned sinks, through the split
    kernel's partials and the combine, vs the float64 reference."""
    from kernel_cases import assert_stats_close, out_tol, random_span, reference_probabilities

    B, Hq, Hkv, Nq, Nk, D, padding, split_len = CASES[case]
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, padding)
    mods = dict(mods)
    if mods.pop("sinks", False):
        mods["sinks"] = torch.randn(Hq, device=DEVICE) * 2
    span = random_span(B, Nk)
    W = int(torch.randint(1, Nk + 3, ()).item())
    probes = torch.randint(0, Nk, (B, 2), device=DEVICE)
    offsets = (0, 1, split_len + 3)
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=tok,
                            probe_keys=probes, span=span)
    kw = dict(offsets=offsets, entropy=True, distance=True, local_window=W, top1=True, **mods)
    out, stats = attention_with_stats_decode(q, k, v, StatsRequest(scale=D ** -0.5, **kw), side, split_len=split_len)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), key_padding_mask=mask,
                                              probe_keys=probes, token_ids=tok, span=span, **kw)
    what = f"{case} {dtype} {mods} W={W} seed={seed}"
    stats.mark_nan_rows(out.isnan().any(-1))
    assert not out.isnan().any(), what
    assert (out.double() - ref_out).abs().max().item() <= out_tol(dtype, v, mods.get("softcap")), what
    p_ref = reference_probabilities(q, k, mask, mods.get("window"), mods.get("softcap"), mods.get("sinks"))
    assert_stats_close(stats, ref, dtype, what, Nk, p_ref, mods.get("softcap"))


def test_hook_routes_long_decode_with_every_feature_to_split_kernel(seed, monkeypatch):
    calls = []
    real = triton_decode.attention_with_stats_decode

    def spy(*args, **kwargs):
        calls.append(args[3])  # the StatsRequest
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_decode, "attention_with_stats_decode", spy)
    q, k, v, tok, _ = make_inputs(1, 2, 1, 1, 530, 16, torch.float32, None)
    attention_with_stats(q, k, v, backend="triton", top1=True, window=100, softcap=5.0, distance=True)
    assert len(calls) == 1 and calls[0].top1 and calls[0].window == 100 and calls[0].softcap == 5.0


@pytest.mark.parametrize("W", [1, 5, 37, 70])
def test_split_decode_range_segments_match_float64(W, seed, poison_outputs):
    """Each split's unmasked tiles are cut so that only those reaching a row's local window or the
    span run that code: the sums must still count every key, with spans before the local tiles,
    across their first edge, inside them, within one tile and empty, and windows across splits."""
    from kernel_cases import assert_stats_close, reference_probabilities

    B, Hq, Hkv, Nq, Nk, D = 5, 4, 2, 3, 200, 16
    q, k, v, _, _ = make_inputs(B, Hq, Hkv, Nq, Nk, D, torch.float32, None)
    q = 0.2 * torch.randn_like(q)  # flat rows (scores within about +-1): every key holds a share of the mass
    span = torch.tensor([[3, 21], [100, 170], [150, 199], [185, 190], [120, 120]], device=DEVICE)
    kw = dict(distance=True, local_window=W, top1=True)
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, span=span)
    _, stats = attention_with_stats_decode(q, k, v, StatsRequest(scale=D ** -0.5, **kw), side, split_len=64)
    _, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), span=span, **kw)
    assert_stats_close(stats, ref, torch.float32, f"W={W} seed={seed}", Nk, reference_probabilities(q, k, None))
    assert (ref.span[:4] > 1e-3).all() and (ref.local > 1e-4).all()  # the sums are not trivially 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("modifier", [{}, {"softcap": 5.0}, {"window": 30}], ids=str)
@pytest.mark.parametrize("split_len", [16, 32])
def test_split_decode_top1_exact_ties_go_to_the_first_key(dtype, modifier, split_len, seed, poison_outputs):
    """The split loop keeps only the tile of the running max and its epilogue re-scores it; the
    combine keeps the first split reaching the max: exact ties across tiles, splits and within
    a tile go to the first key, padded and out-of-window keys never win."""
    from kernel_cases import first_top_key, integer_scores_case

    q, k, v, mask = integer_scores_case(dtype)
    q = q[:, :, 48:]  # 16 decode queries at keys 48-63
    want = first_top_key(q, k, mask, **modifier)
    assert want[0].item() == (37 if "window" in modifier else 5) and want[-1].item() == 50  # the ties are there
    side = SideInputs.build(batch=1, k_len=k.shape[2], device=q.device, key_padding_mask=mask)
    request = StatsRequest(scale=q.shape[-1] ** -0.5, top1=True, **modifier)
    _, stats = attention_with_stats_decode(q, k, v, request, side, split_len=split_len)
    assert torch.equal(stats.top1_index[0, 0], want)
