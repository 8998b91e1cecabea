"""Calls that request no statistic beyond lse and sink (a model outside record()) run on
PyTorch's CPU SDPA kernel; they must still match the float64 reference."""

import pytest
import torch
from circuit_stats.kernels import SideInputs, attention_with_stats, attention_with_stats_naive
from circuit_stats.kernels.chunked import attention_lse_sink_sdpa
from devices import DEVICE
from kernel_cases import CASES, OUT_TOL, assert_stats_close, make_inputs


@pytest.mark.skipif(DEVICE != "cpu", reason="the SDPA path is the CPU's")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_plain_calls_match_float64(case, dtype, seed, poison_outputs):
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    q, k, v, _, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 64, dtype, padding)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), key_padding_mask=mask)
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask)
    takes_sdpa = attention_lse_sink_sdpa(q, k, v, scale=0.125, side=side) is not None
    assert takes_sdpa == (Nq == Nk or Nq == 1), case
    out, stats = attention_with_stats(q, k, v, key_padding_mask=mask)
    what = f"{case} {dtype} seed={seed} sdpa={takes_sdpa}"
    assert out.dtype == dtype and not out.isnan().any(), what
    assert (out.double() - ref_out).abs().max().item() <= OUT_TOL[dtype], what
    assert set(stats.as_dict()) == {"lse", "sink"}
    assert_stats_close(stats, ref, dtype, what, Nk)
