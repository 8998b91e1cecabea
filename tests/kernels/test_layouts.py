"""Every backend gives the same numbers for any memory layout of q/k/v: a strided head dim, the
[B, N, H, D] -> [B, H, N, D] transpose transformers hands over, heads sliced out of a larger
tensor, kv heads expanded with stride 0. Each layout is checked against the same backend on
contiguous copies and against the float64 reference."""

import pytest
import torch
from circuit_stats.kernels import SideInputs, attention_with_stats, attention_with_stats_naive
from circuit_stats.kernels.chunked import attention_lse_sink_sdpa
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels.triton_attention import FUSED_HEURISTICS
from circuit_stats.kernels.triton_common import TMA_SWITCH
from circuit_stats.kernels.triton_decode import attention_with_stats_decode
from devices import DEVICE, KERNEL_DTYPES
from kernel_cases import OUT_TOL, STAT_TOL, assert_stats_close


def head_dim_stride_2(x):  # every other element of a twice-as-wide head dim
    wide = torch.randn(*x.shape[:-1], 2 * x.shape[-1], device=x.device, dtype=x.dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


def transposed(x):  # [B, N, H, D] memory seen as [B, H, N, D]
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def head_dim_transposed(x):  # [B, H, D, N] memory: the head dim has stride N
    return x.transpose(2, 3).contiguous().transpose(2, 3)


def sliced_heads(x):  # every other head of a tensor with twice the heads, offset by one
    wide = torch.randn(x.shape[0], 2 * x.shape[1], *x.shape[2:], device=x.device, dtype=x.dtype)
    wide[:, 1::2] = x
    return wide[:, 1::2]


def sliced_head_dim(x):  # the middle of a wider head dim (dense rows, padded pitch)
    wide = torch.randn(*x.shape[:-1], x.shape[-1] + 6, device=x.device, dtype=x.dtype)
    wide[..., 3 : 3 + x.shape[-1]] = x
    return wide[..., 3 : 3 + x.shape[-1]]


LAYOUTS = {f.__name__: f for f in (head_dim_stride_2, transposed, head_dim_transposed, sliced_heads, sliced_head_dim)}

# (backend, Nq, Nk, stats requested): "sdpa" is the CPU fast path (no statistic beyond lse and
# sink), "chunked" the torch backend with statistics, "triton" the fused kernel, "decode" the
# split-key decode kernel (called directly with small splits).
BACKENDS = {
    "sdpa": ("torch", 13, 13, False),
    "sdpa-decode": ("torch", 1, 13, False),
    "chunked": ("torch", 13, 13, True),
    "triton": ("triton", 13, 13, True),
    "decode": ("decode", 3, 40, True),
}


def run(backend, q, k, v, side, stats):
    kw = dict(offsets=(1, 2), entropy=True) if stats else dict(offsets=(), entropy=False)
    if backend == "decode":
        return attention_with_stats_decode(q, k, v, StatsRequest(scale=q.shape[-1] ** -0.5, **kw), side, split_len=16)
    return attention_with_stats(q, k, v, backend=backend, side_inputs=side, **kw)


def make_qkv(B, Hq, Hkv, Nq, Nk, D, dtype):
    q = torch.randn(B, Hq, Nq, D, device=DEVICE, dtype=dtype)
    q = q * (1 + 3 * torch.rand(B, Hq, Nq, 1, device=DEVICE, dtype=dtype))  # some sharp rows
    k, v = (torch.randn(B, Hkv, Nk, D, device=DEVICE, dtype=dtype) for _ in range(2))
    return q, k, v


def check(got, ref, want, dtype, what, Nk):
    (out, stats), (ref_out, ref_stats), (want_out, want_stats) = got, ref, want
    assert out.shape == ref_out.shape and not out.isnan().any(), what
    torch.testing.assert_close(out, ref_out, atol=OUT_TOL[dtype], rtol=0, msg=f"{what}: output vs contiguous")
    assert set(stats.as_dict()) == set(ref_stats.as_dict()), what
    for name, val in ref_stats.as_dict().items():
        torch.testing.assert_close(getattr(stats, name), val, atol=STAT_TOL[dtype], rtol=0,
                                   msg=f"{what}: {name} vs contiguous")
    assert (out.double() - want_out).abs().max().item() <= OUT_TOL[dtype], f"{what}: output vs float64"
    assert_stats_close(stats, want_stats, dtype, what, Nk)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_layouts_match_contiguous_and_float64(layout, backend, dtype, seed, poison_outputs):
    kind, Nq, Nk, stats = BACKENDS[backend]
    B, Hq, Hkv, D = 2, 4, 2, 16
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, dtype)
    tok = torch.randint(0, 4, (B, Nk), device=DEVICE) if stats else None
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, token_ids=tok)
    if backend.startswith("sdpa") and DEVICE == "cpu":  # the fast path must be the one under test
        assert attention_lse_sink_sdpa(q, k, v, scale=D ** -0.5, side=side) is not None
    ref = run(kind, q, k, v, side, stats)
    strided = [LAYOUTS[layout](t) for t in (q, k, v)]
    assert all(torch.equal(a, b) for a, b in zip(strided, (q, k, v)))
    got = run(kind, *strided, side, stats)
    kw = dict(offsets=(1, 2), token_ids=tok, entropy=True) if stats else {}
    want = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    check(got, ref, want, dtype, f"{backend} {layout} {dtype} seed={seed}", Nk)


def tma_loads(k, v) -> bool:  # whether the fused kernel reads K and V through TMA descriptors
    return FUSED_HEURISTICS["TMA_KV"](dict(K=k, V=v))


def test_layouts_cover_both_kv_load_paths():
    """Contiguous K and V are read through TMA tensor descriptors, and the layouts above include
    layouts read through pointers: so the fused kernel's layout checks compare the two load paths."""
    k = torch.randn(2, 3, 13, 16, dtype=torch.float16)
    assert tma_loads(k, k)
    assert {name: tma_loads(f(k), k) for name, f in LAYOUTS.items()} == {
        "head_dim_stride_2": False, "transposed": True, "head_dim_transposed": False, "sliced_heads": True,
        "sliced_head_dim": False}
    odd_rows = torch.randn(2, 3, 13, 20, dtype=torch.float16)  # 40-byte rows: not 16-byte aligned
    assert not tma_loads(odd_rows, odd_rows) and not tma_loads(k, odd_rows)


def test_the_tma_switch_turns_every_launch_to_pointer_loads(monkeypatch, seed, poison_outputs):
    """With CIRCUIT_STATS_TMA=0 a contiguous launch reads K and V through pointers, and gives the
    numbers of the TMA launch."""
    q, k, v = make_qkv(2, 4, 2, 21, 21, 16, torch.float32)
    tma = attention_with_stats(q, k, v, backend="triton", entropy=True)
    monkeypatch.setenv(TMA_SWITCH, "0")
    assert not tma_loads(k, v)
    pointers = attention_with_stats(q, k, v, backend="triton", entropy=True)
    monkeypatch.setenv(TMA_SWITCH, "1")
    assert tma_loads(k, v)
    torch.testing.assert_close(pointers[0], tma[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pointers[1].entropy, tma[1].entropy, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tma", [False, True], ids=["pointer-loads", "tma-loads"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_expanded_kv_heads_match_grouped_call(backend, tma, seed, poison_outputs):
    """kv heads expanded with stride 0 to the query heads give the grouped (GQA) call's numbers
    (the fused kernel reads them through TMA when the head dim is contiguous)."""
    kind, Nq, Nk, stats = BACKENDS[backend]
    B, Hq, D, dtype = 2, 4, 16, torch.float32
    q, k, v = make_qkv(B, Hq, 1, Nq, Nk, D, dtype)
    tok = torch.randint(0, 4, (B, Nk), device=DEVICE) if stats else None
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, token_ids=tok)
    ref = run(kind, q, k, v, side, stats)
    k_wide, v_wide = ((t if tma else head_dim_stride_2(t)).expand(B, Hq, Nk, D) for t in (k, v))
    assert k_wide.stride(1) == 0 and tma_loads(k_wide, v_wide) == tma
    got = run(kind, q, k_wide, v_wide, side, stats)
    kw = dict(offsets=(1, 2), token_ids=tok, entropy=True) if stats else {}
    want = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    check(got, ref, want, dtype, f"{backend} expanded kv seed={seed}", Nk)
