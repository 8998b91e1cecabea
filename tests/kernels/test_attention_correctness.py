"""Fused kernel vs chunked torch backend vs a float64 materialised reference."""

import pytest
import torch
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels import attention_with_stats, attention_with_stats_naive
from devices import DEVICE, KERNEL_DTYPES
from kernel_cases import CASES, OUT_TOL, assert_stats_close, make_inputs, random_span, reference_probabilities

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("D", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_all_statistics_match_float64(case, D, dtype, seed, poison_outputs):
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, padding)
    probes = torch.randint(0, Nk, (B, 3), device=DEVICE)
    probes[:, 0] = Nk - 1  # the last key: attendable only by the last query
    W = int(torch.randint(1, Nk + 3, ()).item())
    kw = dict(key_padding_mask=mask, offsets=(0, 1, 3, Nk + 2), probe_keys=probes, token_ids=tok, entropy=True,
              distance=True, local_window=W, top1=True, span=random_span(B, Nk))
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    p_ref = reference_probabilities(q, k, mask)
    for backend in ("triton", "torch"):
        out, stats = attention_with_stats(q, k, v, backend=backend, **kw)
        what = f"{backend} {case} D={D} {dtype} W={W} seed={seed}"
        assert out.dtype == dtype and out.shape == (B, Hq, Nq, D)
        assert not torch.isnan(out).any(), f"{what}: NaN in output"
        err = (out.double() - ref_out).abs().max().item()
        assert err <= OUT_TOL[dtype], f"{what}: output off by {err:.3g}"
        for name, val in stats.as_dict().items():
            assert not val.isnan().any(), f"{what}: NaN in {name}"
        assert_stats_close(stats, ref, dtype, what, Nk, p_ref)
        if padding:  # rows with no attendable key: all zeros, never NaN
            empty = ~torch.isfinite(ref.lse)
            assert empty.any()
            assert (out.float().abs().amax(-1)[empty] == 0).all()
            assert (stats.top1_index[empty] == -1).all()
            for name in ("sink", "entropy", "distance", "local", "top1_prob", "span", "induction"):
                assert (getattr(stats, name)[empty] == 0).all(), f"{what}: {name} on empty rows"


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_output_matches_sdpa(dtype, seed):
    q, k, v, _, _ = make_inputs(2, 4, 4, 57, 57, 64, dtype, None)
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    for backend in ("triton", "torch"):
        out, _ = attention_with_stats(q, k, v, backend=backend)
        assert (out.float() - want).abs().max().item() <= OUT_TOL[dtype]


def test_unrequested_statistics_are_none(seed):
    q, k, v, _, _ = make_inputs(1, 2, 2, 20, 20, 32, torch.float32, None)
    for backend in ("triton", "torch"):
        _, stats = attention_with_stats(q, k, v, backend=backend)
        assert stats.offsets is None and stats.induction is None and stats.entropy is None
        assert set(stats.as_dict()) == {"lse", "sink"}


def test_repeated_sequence_offsets_find_planted_pattern(seed):
    """A hand-built 'induction head': each query in the second copy looks at key i-(L-1).
    The offset statistic, token-match induction and the float64 reference must all agree."""
    L, D = 11, 32
    N = 2 * L
    tok = torch.randperm(50)[:L].repeat(2)[None].to(DEVICE)
    k = torch.randn(1, 1, N, D, device=DEVICE)
    q = torch.zeros(1, 1, N, D, device=DEVICE)
    q[0, 0, L:] = 8 * k[0, 0, 1 : L + 1]  # query i attends key i-(L-1)
    q[0, 0, :L] = torch.randn(L, D)
    v = torch.randn(1, 1, N, D, device=DEVICE)
    for backend in ("triton", "torch"):
        _, stats = attention_with_stats(q, k, v, offsets=(L - 1, L), token_ids=tok, backend=backend)
        second = slice(L, N)
        assert stats.offsets[0, 0, second, 0].mean() > 0.9
        # Scores here are ~65 in log2 units, where fp32 spacing alone is ~8e-6: the loop's
        # accumulated mass and the epilogue's point probability agree to a few 1e-5.
        torch.testing.assert_close(stats.induction[0, 0, second], stats.offsets[0, 0, second, 0], atol=5e-5, rtol=0)
        torch.testing.assert_close(stats.duplicate[0, 0, second], stats.offsets[0, 0, second, 1], atol=5e-5, rtol=0)


def test_block_shapes_do_not_change_results(seed):
    """Different tile shapes exercise different stage-1/stage-2 splits and left-pad skips."""
    q, k, v, tok, mask = make_inputs(2, 2, 1, 70, 70, 32, torch.float32, "left")
    from circuit_stats.kernels import SideInputs
    from circuit_stats.kernels.triton_attention import attention_with_stats_triton

    side = SideInputs.build(batch=2, k_len=70, device=q.device, key_padding_mask=mask, token_ids=tok,
                            probe_keys=torch.tensor([[3, 60], [0, 69]]))
    request = StatsRequest(scale=32 ** -0.5, offsets=(1, 5), entropy=True)
    o1, s1 = attention_with_stats_triton(q, k, v, request, side, block=(16, 16))
    o2, s2 = attention_with_stats_triton(q, k, v, request, side, block=(32, 16))
    torch.testing.assert_close(o1, o2)
    for name, val in s1.as_dict().items():
        torch.testing.assert_close(val, getattr(s2, name), atol=1e-6, rtol=1e-5)
