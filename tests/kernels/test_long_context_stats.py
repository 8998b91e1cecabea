"""distance, local, top1 and span (issue 13) vs the float64 reference: the torch backend with
several chunkings here, both backends on every head dim in ``test_attention_correctness``."""

import pytest
import torch
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels import SideInputs, attention_with_stats, attention_with_stats_naive
from circuit_stats.kernels.chunked import attention_with_stats_chunked
from devices import DEVICE
from kernel_cases import (CASES, OUT_TOL, assert_stats_close, first_top_key, integer_scores_case, make_inputs,
                          random_span, reference_probabilities)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("D", [16, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_new_statistics_match_float64(case, D, dtype, seed, poison_outputs):
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, padding)
    W = int(torch.randint(1, Nk + 3, ()).item())
    span = random_span(B, Nk)
    kw = dict(key_padding_mask=mask, offsets=(0, 2), token_ids=tok, entropy=True, distance=True,
              local_window=W, top1=True, span=span)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    p_ref = reference_probabilities(q, k, mask)
    what = f"{case} D={D} {dtype} W={W} seed={seed}"
    out, stats = attention_with_stats(q, k, v, backend="torch", **kw)
    assert (out.double() - ref_out).abs().max().item() <= OUT_TOL[dtype], what
    assert_stats_close(stats, ref, dtype, what, Nk, p_ref)
    # several query chunks per call, each with its own key range
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=tok, span=span)
    request = StatsRequest(scale=D ** -0.5, offsets=(0, 2), entropy=True, distance=True, local_window=W, top1=True)
    out2, stats2 = attention_with_stats_chunked(q, k, v, request, side, chunk_size=4)
    assert (out2.double() - ref_out).abs().max().item() <= OUT_TOL[dtype], what
    assert_stats_close(stats2, ref, dtype, what + " chunk=4", Nk, p_ref)
    if padding:  # the fully padded row
        empty = ~torch.isfinite(ref.lse)
        assert empty.any()
        assert (stats.top1_index[empty] == -1).all()
        for name in ("distance", "local", "top1_prob", "span"):
            assert (getattr(stats, name)[empty] == 0).all(), name


def test_planted_attention_is_found(seed):
    """Each query of the second half attends one chosen key almost surely: top1 finds it, the
    distance is i - j, local and span see it exactly when it is inside their ranges."""
    N, D, back = 40, 32, 13
    k = torch.nn.functional.normalize(torch.randn(1, 1, N, D, device=DEVICE), dim=-1)
    q = torch.randn(1, 1, N, D, device=DEVICE) * 0.01
    target = torch.arange(N) - back
    q[0, 0, back:] = 150 * k[0, 0, target[back:]]
    v = torch.randn(1, 1, N, D, device=DEVICE)
    span = torch.tensor([[5, 15]], device=DEVICE)
    for backend, W, inside in (("torch", back + 1, True), ("torch", back, False), ("triton", back + 1, True),
                               ("triton", back, False)):
        _, st = attention_with_stats(q, k, v, distance=True, local_window=W, top1=True, span=span, backend=backend)
        rows = slice(back, N)
        assert torch.equal(st.top1_index[0, 0, rows], target[back:].to(DEVICE))
        assert (st.top1_prob[0, 0, rows] > 0.99).all()
        torch.testing.assert_close(st.distance[0, 0, rows], torch.full((N - back,), float(back), device=DEVICE),
                                   atol=0.2, rtol=0)
        assert ((st.local[0, 0, rows] > 0.99) if inside else (st.local[0, 0, rows] < 0.01)).all(), W
        in_span = ((target[back:] >= 5) & (target[back:] < 15)).to(DEVICE)
        assert ((st.span[0, 0, rows] > 0.99) == in_span).all()
    assert st.top1_index[0, 0, 0] == 0 and st.distance[0, 0, 0] == 0  # query 0 sees only key 0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_unrequested_new_statistics_are_none(backend, seed):
    q, k, v, _, _ = make_inputs(1, 2, 2, 9, 9, 16, torch.float32, None)
    _, st = attention_with_stats(q, k, v, backend=backend)
    assert st.distance is None and st.local is None and st.top1_index is None and st.span is None
    assert st.learned_sink is None


@pytest.mark.parametrize(
    "kwargs,exc,needle",
    [
        ({"local_window": 0}, ValueError, "local_window must be an int >= 1"),
        ({"local_window": 2.5}, ValueError, "local_window"),
        ({"distance": 1}, TypeError, "distance must be a bool"),
        ({"top1": "yes"}, TypeError, "top1 must be a bool"),
        ({"span": torch.tensor([0, 3])}, ValueError, "span must have shape"),
        ({"span": torch.tensor([[0.0, 3.0]])}, TypeError, "span must be an integer"),
        ({"span": torch.tensor([[4, 3]])}, ValueError, "start <= end"),
        ({"span": torch.tensor([[0, 9]])}, ValueError, "end <= 8"),
        ({"span": torch.tensor([[-1, 3]])}, ValueError, "0 <= start"),
    ],
)
def test_bad_new_arguments_name_themselves(kwargs, exc, needle):
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    with pytest.raises(exc, match=needle):
        attention_with_stats(q, k, v, **kwargs)


# Spans laid out against the 16-key tiles of the triton tests below (keys 0..99, the last block's
# unmasked tiles end at 80 or 96): before the local tiles with a plain gap, across their first
# edge, inside them, starting and ending inside a tile, and empty.
SEGMENT_SPANS = [[3, 21], [40, 75], [70, 90], [17, 18], [50, 50]]


@pytest.mark.parametrize("block", [(16, 16), (32, 16)], ids=str)
@pytest.mark.parametrize("W", [1, 5, 16, 37])
def test_range_segments_match_float64(block, W, seed, poison_outputs):
    """The unmasked key tiles are cut so that only those reaching a row's local window or the
    span run that code: local and span mass must still count every key, wherever the local
    window (W not a multiple of the tile) and the span sit against the cuts."""
    from circuit_stats.kernels.triton_attention import attention_with_stats_triton

    B, N, D = len(SEGMENT_SPANS), 100, 16
    q, k, v, _, _ = make_inputs(B, 2, 1, N, N, D, torch.float32, None)
    q = 0.2 * torch.randn_like(q)  # flat rows (scores within about +-1): every key holds a share of the mass
    span = torch.tensor(SEGMENT_SPANS, device=DEVICE)
    kw = dict(distance=True, local_window=W, top1=True, span=span)
    _, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    side = SideInputs.build(batch=B, k_len=N, device=q.device, span=span)
    request = StatsRequest(scale=D ** -0.5, distance=True, local_window=W, top1=True)
    _, stats = attention_with_stats_triton(q, k, v, request, side, block=block)
    what = f"block={block} W={W} seed={seed}"
    assert_stats_close(stats, ref, torch.float32, what, N, reference_probabilities(q, k, None))
    assert (ref.span[0, :, 30:] > 1e-3).all() and (ref.local > 1e-4).all()  # the sums are not trivially 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("modifier", [{}, {"softcap": 5.0}, {"window": 30}], ids=str)
@pytest.mark.parametrize("block", [(16, 16), (32, 16), (16, 64)], ids=str)  # 64: the re-score's 32-key chunks
def test_top1_exact_ties_go_to_the_first_key(dtype, modifier, block, seed, poison_outputs):
    """The key loop keeps only the tile of the running max and the epilogue re-scores it: exact
    ties across tiles and within one go to the first key, padded and out-of-window keys never
    win, rows of one block with different winning tiles each get their own."""
    from circuit_stats.kernels.triton_attention import attention_with_stats_triton

    q, k, v, mask = integer_scores_case(dtype)
    N, D = q.shape[2], q.shape[3]
    want = first_top_key(q, k, mask, **modifier)
    assert want[40].item() == (37 if "window" in modifier else 5) and want[60].item() == 50  # the ties are there
    side = SideInputs.build(batch=1, k_len=N, device=q.device, key_padding_mask=mask)
    request = StatsRequest(scale=D ** -0.5, top1=True, **modifier)
    _, stats = attention_with_stats_triton(q, k, v, request, side, block=block)
    assert torch.equal(stats.top1_index[0, 0], want)
