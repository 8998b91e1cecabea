"""Every tile the autotuner may choose gives the float64 result, at the models' head dims (64, 128,
256) and every loop level, prefill and decode: a launch runs whichever candidate is fastest on the
machine, so each must be right. On a GPU every candidate config runs (warps and stages change the
compiled code), with and without key padding; under the interpreter, which ignores warps and
stages, each tile shape once, on padded inputs."""

import dataclasses

import pytest
import torch
from circuit_stats.kernels import attention_with_stats_naive, autotune, pinning, triton_attention
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels.side_inputs import SideInputs
from circuit_stats.kernels.triton_common import device_smem_limit
from circuit_stats.kernels.triton_token_match import attention_with_stats_fused
from devices import DEVICE, HAS_CUDA
from kernel_cases import Launches, assert_stats_close, make_inputs, out_tol, random_span, reference_probabilities

SOFTCAP, WINDOW = 5.0, 37
# A request per loop level (autotune.LOOP_LEVELS), with the token matching mode it runs: "band"
# takes token matching out of the main kernel (which then runs at the entropy level).
LEVELS = {
    "none": (dict(offsets=(1, 3)), "band"),
    "modifiers": (dict(offsets=(1,), window=WINDOW, softcap=SOFTCAP, sinks=True), "band"),
    "entropy": (dict(offsets=(1,), entropy=True, token_ids=True), "band"),
    "stats": (dict(offsets=(1,), entropy=True, token_ids=True), "loop"),
    "heavy": (dict(offsets=(2,), distance=True, local_window=9, top1=True, span=True), "band"),
}
SHAPES = {"prefill": (2, 2, 1, 150, 150), "decode": (2, 2, 1, 5, 150)}  # B, Hq, Hkv, Nq, Nk (GQA)
# Key padding compiles other code on a GPU; under the interpreter the tile shapes are what this
# file adds (the other kernel tests run both paths on small tiles), so padded inputs only there.
PADDINGS = [None, "left"] if HAS_CUDA else ["left"]


@pytest.fixture
def no_pins(monkeypatch):
    for name in pinning.PIN_ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pinning, "_PINS", {})
    yield
    pinning.pin_config("fused", None)


def arguments(level, B, Nk, Hq, tok, mask):
    """``attention_with_stats`` keywords for ``level``'s request on these inputs."""
    kw, _ = LEVELS[level]
    kw = dict(kw, key_padding_mask=mask)
    if kw.pop("token_ids", False):
        kw["token_ids"] = tok
    if kw.pop("span", False):
        kw["span"] = random_span(B, Nk)
    if kw.pop("sinks", False):
        kw["sinks"] = torch.linspace(-1.0, 2.0, Hq, device=DEVICE)
    return kw


def candidates(q, k, v, request, side, match):
    """The configs the autotuner would try for the main kernel's launch (one per tile shape under
    the interpreter)."""
    if match == "band":  # the main kernel runs without the token ids (as attention_with_stats_fused)
        side = dataclasses.replace(side, token_ids=None, prev_token_ids=None)
    launch = triton_attention.launch_arguments(q, k, v, request, side)
    flags = launch.flags()
    configs = autotune.candidate_configs(launch.bucket, head_dim=q.shape[-1], elt_bytes=q.element_size(),
                                         loop_level=autotune.loop_level(flags), tma=flags.get("TMA_KV", False),
                                         smem_limit=device_smem_limit(q.device))
    if not HAS_CUDA:
        configs = list({autotune.tile_of(c)[:2]: c for c in configs}.values())
    return autotune.loop_level(flags), configs


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("D", [64, 128, 256])
def test_every_candidate_tile_matches_float64(D, level, shape, padding, no_pins, monkeypatch, seed, poison_outputs):
    name = "FUSED_DECODE_KERNEL" if shape == "decode" else "_attn_stats_fwd"  # triton_attention.fused_kernel
    launches = Launches(getattr(triton_attention, name))
    monkeypatch.setattr(triton_attention, name, launches)
    dtype = torch.bfloat16 if HAS_CUDA else torch.float16  # bf16 dots are wrong under the interpreter
    B, Hq, Hkv, Nq, Nk = SHAPES[shape]
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, padding)
    kw = arguments(level, B, Nk, Hq, tok, mask)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    p_ref = reference_probabilities(q, k, mask, kw.get("window"), kw.get("softcap"), kw.get("sinks"))
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=kw.get("token_ids"),
                            span=kw.get("span"))
    request = StatsRequest(scale=D ** -0.5, **{n: x for n, x in kw.items()
                                                 if n not in ("key_padding_mask", "token_ids", "span")})
    _, match = LEVELS[level]
    ran_level, configs = candidates(q, k, v, request, side, match)
    assert ran_level == level and configs
    for config in configs:
        pinning.pin_config("fused", config)
        what = f"D={D} {level} {shape} padding={padding} {pinning.config_text(config)} {dtype} seed={seed}"
        out, stats = attention_with_stats_fused(q, k, v, request, side, token_match=match)
        assert pinning.config_values(config) == {key: launches.calls[-1][key] for key in pinning.PIN_KEYS["fused"]}
        assert not out.isnan().any(), f"{what}: NaN in the output"
        err = (out.double() - ref_out).abs().max().item()
        assert err <= out_tol(dtype, v, kw.get("softcap")), f"{what}: output off by {err:.3g}"
        assert_stats_close(stats, ref, dtype, what, Nk, p_ref, softcap=kw.get("softcap"))
