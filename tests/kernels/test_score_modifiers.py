"""Sliding window, logit soft-capping and learned sinks (issue 9) in both backends, vs the
float64 reference and vs a plain eager computation written as the models write it."""

import math

import pytest
import torch
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels import SideInputs, attention_with_stats, attention_with_stats_naive, stats_from_probabilities
from circuit_stats.kernels.chunked import attention_with_stats_chunked
from devices import DEVICE
from kernel_cases import CASES, OUT_TOL, STAT_TOL, assert_stats_close, make_inputs, out_tol, random_span

MODIFIERS = {
    "window": dict(window=7),
    "window-1": dict(window=1),
    "softcap": dict(softcap=2.5),
    "sinks": dict(sinks=True),
    "all": dict(window=5, softcap=3.0, sinks=True),
}


def modifier_kwargs(name, Hq):
    kw = dict(MODIFIERS[name])
    if kw.pop("sinks", False):
        kw["sinks"] = torch.randn(Hq, device=DEVICE) * 2  # some heads dump most mass on the sink
    return kw


def eager_probabilities(q, k, scale, mask, window=None, softcap=None, sinks=None):
    """float64 probabilities as eager attention computes them: transformers' sliding-window mask
    function, Gemma 2's capping, gpt-oss' sink column. Returns (keys' p, sink mass or None)."""
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    B, Hq, Nq, _ = q.shape
    Nk = k.shape[2]
    kk = k.double().repeat_interleave(Hq // k.shape[1], 1)
    s = (q.double() @ kk.transpose(-1, -2)) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    fn = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    q_idx = torch.arange(Nk - Nq, Nk, device=DEVICE)[:, None]
    kv_idx = torch.arange(Nk, device=DEVICE)[None, :]
    allowed = fn(0, 0, q_idx, kv_idx)[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    s = s.masked_fill(~allowed, -math.inf)
    if sinks is None:
        return torch.softmax(s, -1).nan_to_num(0.0), None
    logits = torch.cat([s, sinks.double().view(1, Hq, 1, 1).expand(B, Hq, Nq, 1)], -1)
    probs = torch.softmax(logits, -1)
    return probs[..., :-1], probs[..., -1]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("modifier", list(MODIFIERS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_modifiers_match_float64(backend, modifier, case, dtype, seed, poison_outputs):
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    D = 32
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, padding)
    mods = modifier_kwargs(modifier, Hq)
    W = int(torch.randint(1, Nk + 3, ()).item())
    span = random_span(B, Nk)
    probes = torch.randint(0, Nk, (B, 2), device=DEVICE)
    kw = dict(key_padding_mask=mask, offsets=(0, 1, 4), probe_keys=probes, token_ids=tok, entropy=True,
              distance=True, local_window=W, top1=True, span=span, **mods)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    p_ref, _ = eager_probabilities(q, k, D ** -0.5, mask, mods.get("window"), mods.get("softcap"), mods.get("sinks"))
    what = f"{backend} {modifier} {case} {dtype} W={W} seed={seed}"
    assert ref.learned_sink is not None if "sinks" in mods else ref.learned_sink is None
    out, stats = attention_with_stats(q, k, v, backend=backend, **kw)
    cap = mods.get("softcap")
    assert (out.double() - ref_out).abs().max().item() <= out_tol(dtype, v, cap), what
    assert_stats_close(stats, ref, dtype, what, Nk, p_ref, cap)
    if backend == "torch":  # several query chunks, each with its own key range
        side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=tok,
                                probe_keys=probes, span=span)
        request = StatsRequest(scale=D ** -0.5, offsets=(0, 1, 4), entropy=True, distance=True, local_window=W,
                               top1=True, **mods)
        out2, stats2 = attention_with_stats_chunked(q, k, v, request, side, chunk_size=3)
        assert (out2.double() - ref_out).abs().max().item() <= OUT_TOL[dtype], what + " chunk=3"
        assert_stats_close(stats2, ref, dtype, what + " chunk=3", Nk, p_ref)  # the torch backend caps exactly
    if padding:  # the fully padded row
        empty = ~(mask.any(-1))[:, None, None].expand_as(ref.sink)
        assert (out.float().abs().amax(-1)[empty] == 0).all()
        assert (stats.top1_index[empty] == -1).all() and (stats.entropy[empty] == 0).all()
        if "sinks" in mods:  # all the mass on the learned sink, lse = its logit
            assert (stats.learned_sink[empty] == 1).all()
            sink_rows = mods["sinks"].view(1, Hq, 1).expand_as(stats.lse)
            torch.testing.assert_close(stats.lse[empty], sink_rows[empty])
        else:
            assert torch.isneginf(stats.lse[empty]).all()


@pytest.mark.hf  # reads transformers' sliding-window mask function: CI checks it on the oldest release too
@pytest.mark.parametrize("padding", [None, "left"])
def test_modifiers_match_eager_written_like_the_models(padding, seed):
    """Our window == transformers' sliding_window_causal_mask_function (kv > q - W, kv <= q);
    capping and the sink column as Gemma 2 / gpt-oss eager attention compute them."""
    B, Hq, Hkv, N, D = 2, 4, 2, 23, 16
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, N, N, D, torch.float32, padding)
    sinks = torch.randn(Hq, device=DEVICE)
    for backend, mods in [(b, m) for b in ("torch", "triton") for m in (
            dict(window=4), dict(softcap=1.5), dict(sinks=sinks), dict(window=6, softcap=2.0, sinks=sinks))]:
        p, sink_mass = eager_probabilities(q, k, D ** -0.5, mask, **mods)
        want_out = p @ v.double().repeat_interleave(Hq // Hkv, 1)
        want = stats_from_probabilities(p, key_padding_mask=mask, offsets=(1,), token_ids=tok, entropy=True,
                                        distance=True, local_window=3, top1=True, window=mods.get("window"),
                                        learned_sink=sink_mass)
        out, got = attention_with_stats(q, k, v, key_padding_mask=mask, offsets=(1,), token_ids=tok, entropy=True,
                                        distance=True, local_window=3, top1=True, backend=backend, **mods)
        assert (out.double() - want_out).abs().max() <= OUT_TOL[torch.float32], (backend, mods)
        for name, val in want.as_dict().items():
            if name == "lse":  # stats_from_probabilities does not know the lse
                continue
            assert torch.allclose(getattr(got, name).double(), val.double(), atol=STAT_TOL[torch.float32] * N,
                                  rtol=0, equal_nan=True), (backend, name, mods)
        if "sinks" in mods:  # the keys' probabilities sum to 1 - learned_sink
            torch.testing.assert_close(p.sum(-1)[mask.any(-1)] if padding else p.sum(-1),
                                       (1 - got.learned_sink.double())[mask.any(-1)] if padding
                                       else 1 - got.learned_sink.double(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [9, 21, 40])
@pytest.mark.parametrize("block", [(16, 16), (32, 16), (16, 32)])
def test_triton_window_stages_for_every_tile_shape(window, block, seed):
    """The kernel splits each row block's keys into a masked window-edge stage, an unmasked stage
    and the masked diagonal: windows shorter than, equal to and longer than a tile, and tiles of
    several shapes, must all give the float64 result."""
    from circuit_stats.kernels.triton_attention import attention_with_stats_triton

    B, Hq, Hkv, N, D = 2, 2, 1, 70, 16
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, N, N, D, torch.float32, "left")
    span = random_span(B, N)
    kw = dict(offsets=(1, 5), entropy=True, distance=True, local_window=11, top1=True, window=window, softcap=4.0)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), key_padding_mask=mask, token_ids=tok,
                                              span=span, **kw)
    side = SideInputs.build(batch=B, k_len=N, device=q.device, key_padding_mask=mask, token_ids=tok, span=span)
    out, got = attention_with_stats_triton(q, k, v, StatsRequest(scale=D ** -0.5, **kw), side, block=block)
    got.mark_nan_rows(out.isnan().any(-1))
    p_ref, _ = eager_probabilities(q, k, D ** -0.5, mask, window, 4.0)
    assert (out.double() - ref_out).abs().max().item() <= OUT_TOL[torch.float32]
    assert_stats_close(got, ref, torch.float32, f"window={window} block={block}", N, p_ref)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_window_one_attends_only_itself(backend, seed):
    q, k, v, _, _ = make_inputs(1, 2, 2, 12, 12, 16, torch.float32, None)
    out, st = attention_with_stats(q, k, v, window=1, top1=True, distance=True, backend=backend)
    torch.testing.assert_close(out, v)
    assert torch.equal(st.top1_index[0, 0], torch.arange(12, device=DEVICE))
    assert (st.distance == 0).all() and (st.lse.isfinite()).all()


@pytest.mark.parametrize(
    "kwargs,exc,needle",
    [
        ({"window": 0}, ValueError, "window must be an int >= 1"),
        ({"window": True}, ValueError, "window"),
        ({"softcap": 0.0}, ValueError, "softcap must be a finite float > 0"),
        ({"softcap": float("inf")}, ValueError, "softcap"),
        ({"sinks": torch.zeros(3)}, ValueError, r"sinks must have shape \(2,\)"),
        ({"sinks": torch.zeros(2, dtype=torch.long)}, TypeError, "sinks must be a float tensor"),
        ({"sinks": [0.0, 1.0]}, TypeError, "sinks must be a float tensor"),
    ],
)
def test_bad_modifiers_name_themselves(kwargs, exc, needle):
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    with pytest.raises(exc, match=needle):
        attention_with_stats(q, k, v, **kwargs)
