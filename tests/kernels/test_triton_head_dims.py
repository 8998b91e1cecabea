"""Any head dim 1..256: the Triton kernel pads the head dim on chip (masked loads), the torch
backend takes any D; both match the float64 reference. Beyond 256, Triton refuses naming head_dim."""

import pytest
import torch
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels import attention_with_stats, attention_with_stats_naive
from devices import DEVICE, KERNEL_DTYPES

STAT_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3}
OUT_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def inputs(B, Hq, Hkv, Nq, Nk, D, dtype):
    q = torch.randn(B, Nq, Hq, D, device=DEVICE, dtype=dtype).transpose(1, 2)  # HF layout: strided
    k = torch.randn(B, Nk, Hkv, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    v = torch.randn(B, Nk, Hkv, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    q = q * (1 + 3 * torch.rand(B, Hq, Nq, 1, device=DEVICE, dtype=dtype))  # some peaky rows
    tok = torch.randint(0, 5, (B, Nk), device=DEVICE)
    mask = torch.ones(B, Nk, dtype=torch.bool, device=DEVICE)
    mask[0, :3] = False  # left padding on one row
    return q, k, v, tok, mask


@pytest.mark.parametrize("D", [8, 24, 40, 80, 96, 112, 160, 200])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_padded_head_dims_match_float64(D, dtype, seed, poison_outputs):
    B, Hq, Hkv, Nq, Nk = 2, 2, 1, 19, 21  # GQA, chunked prefill, odd lengths
    q, k, v, tok, mask = inputs(B, Hq, Hkv, Nq, Nk, D, dtype)
    kw = dict(key_padding_mask=mask, offsets=(1, 4), probe_keys=torch.tensor([[5, 20], [0, 9]], device=DEVICE),
              token_ids=tok, entropy=True)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    for backend in ("triton", "torch"):
        out, stats = attention_with_stats(q, k, v, backend=backend, **kw)
        what = f"{backend} D={D} {dtype} seed={seed}"
        assert out.shape == (B, Hq, Nq, D) and out.dtype == dtype
        err = (out.double() - ref_out).abs().max().item()
        assert err <= OUT_TOL[dtype], f"{what}: output off by {err:.3g}"
        for name, want in ref.as_dict().items():
            got = getattr(stats, name)
            assert got is not None and got.shape == want.shape, f"{what}: {name}"
            fin = torch.isfinite(want)
            assert torch.equal(torch.isfinite(got), fin), f"{what}: {name} finite pattern"
            e = (got.double()[fin] - want[fin]).abs().max().item()
            assert e <= STAT_TOL[dtype], f"{what}: {name} off by {e:.3g}"


def test_triton_refuses_head_dims_beyond_256():
    from circuit_stats.kernels import SideInputs
    from circuit_stats.kernels.triton_attention import attention_with_stats_triton

    q = torch.randn(1, 1, 2, 264)
    side = SideInputs.build(batch=1, k_len=2, device=q.device)
    with pytest.raises(ValueError, match="head_dim"):
        attention_with_stats_triton(q, q, q, StatsRequest(scale=0.1), side)
    # The torch backend takes it.
    out, _ = attention_with_stats(q, q, q, backend="torch")
    assert out.shape == q.shape


def test_head_dim_zero_is_refused():
    q = torch.randn(1, 1, 2, 0)
    with pytest.raises(ValueError, match="head_dim"):
        attention_with_stats(q, q, q, backend="torch")
