"""Token-match induction / duplicate mass by the token-sorted band kernel (issue 23), against the
float64 reference and against the fused kernel's in-loop matching, and the host-side layout
(``token_bands``) against a brute-force list of every matching pair."""

import pytest
import torch
from circuit_stats.kernels import SideInputs, attention_with_stats_naive
from circuit_stats.kernels.naive import allowed_keys
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels.triton_token_match import attention_with_stats_fused, token_bands, token_match_band
from devices import DEVICE
from kernel_cases import OUT_TOL, STAT_TOL, assert_stats_close, make_inputs
from test_score_modifiers import MODIFIERS, modifier_kwargs  # window, window-1, softcap, sinks, all

# (B, Hq, Hkv, Nq, Nk, padding): odd lengths, GQA, chunked prefill (Nq < Nk), left / right
# padding (the last row fully padded), and a longer one (several query blocks and key tiles).
CASES = {
    "odd-square": (2, 2, 2, 37, 37, None),
    "gqa-odd": (1, 4, 2, 45, 45, None),
    "chunk-prefill": (1, 2, 1, 19, 50, None),
    "left-pad": (3, 2, 2, 41, 41, "left"),
    "right-pad": (3, 2, 1, 33, 33, "right"),
    "long-gqa": (1, 2, 1, 150, 150, None),
}


def zipf_tokens(B: int, N: int, vocab: int = 1000, exponent: float = 1.1) -> torch.Tensor:
    """``[B, N]`` token ids drawn from a Zipf law over ``vocab`` ids (natural-text-like)."""
    weights = torch.arange(1, vocab + 1, dtype=torch.float64) ** -exponent
    return torch.multinomial(weights, B * N, replacement=True).view(B, N).to(DEVICE)


def token_ids(kind: str, B: int, N: int) -> torch.Tensor:
    """``[B, N]`` token ids: "constant" (one token: every band is the whole causal triangle),
    "binary" (two tokens), "zipf" (natural-like). Each row repeats a 5-token segment (an exact
    copy, so that duplicate and induction matches exist whatever the seed)."""
    if kind == "constant":
        tok = torch.full((B, N), 7, device=DEVICE)
    elif kind == "binary":
        tok = torch.randint(0, 2, (B, N), device=DEVICE)
    else:
        tok = zipf_tokens(B, N)
    tok[:, N - 6:N - 1] = tok[:, N - 12:N - 7]  # keys N-12.. repeat at N-6..: matches near the end
    return tok


def check_band(case, tokens, dtype, mods, block=None):
    """Band and in-loop matching against float64; the band path's other statistics and output are
    the in-loop path's."""
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    q, k, v, _, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 32, dtype, padding)
    tok = token_ids(tokens, B, Nk)
    kw = dict(key_padding_mask=mask, token_ids=tok, entropy=True, offsets=(1,), **mods)
    _, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    if padding is None:  # the planted repeat makes both masses non-zero (no earlier key in a window of 1)
        assert (ref.induction > 0).any() and ((ref.duplicate > 0).any() or mods.get("window") == 1)
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=tok)
    request = StatsRequest(scale=32 ** -0.5, offsets=(1,), entropy=True, window=mods.get("window"),
                           softcap=mods.get("softcap"), sinks=mods.get("sinks"))
    out, band = attention_with_stats_fused(q, k, v, request, side, token_match="band")
    out_loop, loop = attention_with_stats_fused(q, k, v, request, side, token_match="loop")
    what = f"{case} {tokens} {dtype} {sorted(mods)}"
    assert_stats_close(band, ref, dtype, what + " band", Nk, softcap=mods.get("softcap"))
    assert_stats_close(loop, ref, dtype, what + " loop", Nk, softcap=mods.get("softcap"))
    for name in ("induction", "duplicate"):  # same scores, same lse: the two paths agree closely
        err = (getattr(band, name) - getattr(loop, name)).abs().max().item()
        assert err <= STAT_TOL[torch.float32], f"{what}: {name} band vs loop off by {err:.3g}"
    assert (out.double() - out_loop.double()).abs().max().item() <= OUT_TOL[dtype] / 4, what
    if padding:  # rows with no attendable key (the last batch row): exactly 0, learned sink or not
        empty = ~allowed_keys(Nq, Nk, mask, q.device, mods.get("window"))[:, 0].any(-1)[:, None].expand(B, Hq, Nq)
        assert empty[-1].all()
        assert (band.induction[empty] == 0).all() and (band.duplicate[empty] == 0).all(), what


@pytest.mark.parametrize("tokens", ["constant", "binary", "zipf"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_band_matches_float64_and_loop(case, tokens, dtype, seed, poison_outputs):
    check_band(case, tokens, dtype, {})


@pytest.mark.parametrize("modifier", list(MODIFIERS))
@pytest.mark.parametrize("case", ["gqa-odd", "chunk-prefill", "left-pad", "long-gqa"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_band_with_score_modifiers(modifier, case, dtype, seed, poison_outputs):
    B, Hq = CASES[case][:2]
    check_band(case, "binary", dtype, modifier_kwargs(modifier, Hq))


@pytest.mark.parametrize("tokens, window, padding", [("zipf", 30, "left"), ("constant", None, None)])
@pytest.mark.parametrize("block", [(16, 32, 32), (32, 16, 32), (16, 16, 16), (32, 16, 64), (64, 64, 64), (64, 32, 128)])
def test_band_tiles_do_not_change_results(block, tokens, window, padding, seed):
    """Other query blocks and key tiles (masked, unmasked): other bands, other ragged ends, other
    splits into unmasked and masked tiles, the same masses. One token and no window: blocks whose
    rows' intervals share whole tiles (the unmasked loop runs)."""
    B, Hq, Hkv, Nq, Nk = 2, 2, 1, 70, 83
    q, k, _, _, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 32, torch.float32, padding)
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask,
                            token_ids=token_ids(tokens, B, Nk))
    request = StatsRequest(scale=32 ** -0.5, window=window)
    _, ref = attention_with_stats_naive(q.double(), k.double(), k.double(), key_padding_mask=mask,
                                        token_ids=side.token_ids, window=window)
    lse = ref.lse.float().contiguous()
    if tokens == "constant":  # some block's rows all hold the same 16 keys (a tile of 16 inside every interval)
        iv = token_bands(side, Nq, 16, window).intervals[:, :64].reshape(B, 4, 16, 4)
        assert (iv[..., 1].amin(-1) - iv[..., 0].amax(-1) >= 16).any()
    want = token_match_band(q, k, lse, request, side, block=(16, 16, 16))
    got = token_match_band(q, k, lse, request, side, block=block)
    for name, w, g in zip(("induction", "duplicate"), want, got):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5, msg=f"{name} with block {block}")
        assert (w - getattr(ref, name)).abs().max().item() <= STAT_TOL[torch.float32], name


def test_band_tile_is_checked():
    q = torch.randn(1, 1, 4, 16, device=DEVICE)
    side = SideInputs.build(batch=1, k_len=4, device=DEVICE, token_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="BLOCK_N_FULL=48 must be a multiple of BLOCK_N=32"):
        token_match_band(q, q, torch.zeros(1, 1, 4, device=DEVICE), StatsRequest(scale=0.25), side, block=(16, 32, 48))


def brute_force_pairs(side: SideInputs, q_len: int, window):
    """Every (query row, key) pair that the definitions count: ``{(b, row, key)}`` for
    duplicates and for induction."""
    tok, prev, mask = side.token_ids, side.prev_token_ids, side.key_padding_mask
    B, Nk = tok.shape
    dup, ind = set(), set()
    for b in range(B):
        for row in range(q_len):
            i = Nk - q_len + row
            for j in range(Nk):
                ok = j <= i and (window is None or j > i - window) and (mask is None or bool(mask[b, j]))
                if ok and j < i and tok[b, j] == tok[b, i]:
                    dup.add((b, row, j))
                if ok and prev[b, j] == tok[b, i]:
                    ind.add((b, row, j))
    return dup, ind


@pytest.mark.parametrize("window", [None, 1, 6])
@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_token_bands_hold_exactly_the_matches(window, padding, seed):
    """Each sorted row's intervals hold exactly its matching keys, each query block's runs hold
    its rows' intervals, and the rows with no match come last."""
    B, Nq, Nk, block_m = 3, 29, 40, 8
    mask = None
    if padding:  # row 0 padded on the given side, row 1 fully padded, row 2 not at all
        mask = torch.ones(B, Nk, dtype=torch.bool, device=DEVICE)
        mask[0, :9] = padding != "left"
        mask[0, 31:] = padding != "right"
        mask[1] = False
    tok = torch.randint(0, 3, (B, Nk), device=DEVICE)
    tok[:, 20:24] = tok[:, 14:18]  # an exact repeat in every row's unpadded part: matches exist,
    tok[:, 26] = tok[:, 25]  # and a repeated neighbour (induction on the query's own key, window 1)
    tok[:, Nk - Nq] = 3  # a token seen once: a row with no match
    side = SideInputs.build(batch=B, k_len=Nk, device=DEVICE, key_padding_mask=mask, token_ids=tok)
    bands = token_bands(side, Nq, block_m, window)
    assert sorted(bands.q_order[0].tolist()) == list(range(Nq))
    want_dup, want_ind = brute_force_pairs(side, Nq, window)
    assert want_ind and (want_dup or window == 1)
    for pairs, order, col in ((want_dup, bands.dup_order, 0), (want_ind, bands.ind_order, 2)):
        for b in range(B):
            idle_seen = False
            for r, row in enumerate(bands.q_order[b].tolist()):
                lo, hi = bands.intervals[b, r, col].item(), bands.intervals[b, r, col + 1].item()
                got = sorted(order[b, lo:hi].tolist())
                assert got == sorted(key for bb, rr, key in pairs if (bb, rr) == (b, row)), (b, row, col)
                run_lo, run_hi = bands.ranges[b, r // block_m, col:col + 2].tolist()
                assert hi == lo or run_lo <= lo <= hi <= run_hi, (b, r, col)
                busy = (bands.intervals[b, r, 1] > bands.intervals[b, r, 0]) | (bands.intervals[b, r, 3] > bands.intervals[b, r, 2])
                assert not (idle_seen and busy), "a row with matches after one without"
                idle_seen = idle_seen or not busy
    if padding is None:
        assert not bool(bands.intervals[:, -1].diff()[..., ::2].any())  # the last row (token 3) has none


@pytest.mark.parametrize("window", [None, 5])
def test_one_token_bands_are_the_causal_triangle(window):
    """With one token everywhere, query ``i``'s intervals are the keys it attends: ``j < i``
    (duplicates), ``j <= i`` (induction, less key 0, which has no predecessor), inside the window;
    query 0 has none and is sorted last; the kept keys are the union (every key but the last)."""
    N, block_m = 70, 16
    side = SideInputs.build(batch=1, k_len=N, device=DEVICE, token_ids=torch.zeros(1, N, dtype=torch.long))
    bands = token_bands(side, N, block_m, window)
    assert bands.q_order[0].tolist() == list(range(1, N)) + [0]
    for r, i in enumerate(bands.q_order[0].tolist()):
        lo_pos = 0 if window is None else max(i - window + 1, 0)
        dup_lo, dup_hi, ind_lo, ind_hi = bands.intervals[0, r].tolist()
        assert bands.dup_order[0, dup_lo:dup_hi].tolist() == list(range(lo_pos, i))
        assert bands.ind_order[0, ind_lo:ind_hi].tolist() == list(range(max(lo_pos, 1), i + 1))
    assert bands.dup_order[0, :N - 1].tolist() == list(range(N - 1))


def test_token_match_mode_is_checked():
    q = torch.randn(1, 1, 4, 16, device=DEVICE)
    side = SideInputs.build(batch=1, k_len=4, device=DEVICE, token_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="token_match must be one of"):
        attention_with_stats_fused(q, q, q, StatsRequest(scale=0.25), side, token_match="inloop")
