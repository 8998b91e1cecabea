"""Pinned configs (kernels/pinning.py): an environment variable or ``pin_config`` fixes the config
a launch runs; bad pins are refused naming the variable and what was expected, before any launch."""

import pytest
import torch
from circuit_stats.kernels import attention_with_stats, attention_with_stats_naive, pinning
from circuit_stats.kernels import triton_attention, triton_decode
from circuit_stats.kernels.autotune import SPLIT_CONFIGS, tile_of
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels.side_inputs import SideInputs
from kernel_cases import OUT_TOL, STAT_TOL, Launches, make_inputs


@pytest.fixture
def no_pins(monkeypatch):
    for name in pinning.PIN_ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pinning, "_PINS", {})


def test_pin_from_the_environment_and_the_api(no_pins, monkeypatch):
    assert pinning.pinned("fused") is None and pinning.pinned("split") is None
    monkeypatch.setenv("CIRCUIT_STATS_TRITON_CONFIG", " BLOCK_M=64, BLOCK_N=32,num_warps=4,num_stages=2 ")
    pin = pinning.pinned("fused")
    assert tile_of(pin.config) == (64, 32, 4, 2) and "CIRCUIT_STATS_TRITON_CONFIG" in pin.source
    pinning.pin_config("fused", {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3})  # over the env
    assert tile_of(pinning.pinned("fused").config) == (128, 64, 8, 3)
    pinning.pin_config("fused", None)
    assert tile_of(pinning.pinned("fused").config) == (64, 32, 4, 2)
    pinning.pin_config("split", SPLIT_CONFIGS[1])
    assert pinning.pinned("split").config is SPLIT_CONFIGS[1]


@pytest.mark.parametrize("kernel, text, message", [
    ("fused", "BLOCK_M=64,BLOCK_N=32,num_warps=4", "missing: num_stages"),
    ("fused", "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2,BLOCK_K=8", "unknown: BLOCK_K"),
    ("fused", "BLOCK_M=64,BLOCK_N=32,num_warps=four,num_stages=2", "'num_warps' has no integer value"),
    ("fused", "BLOCK_M=64 BLOCK_N=32", "has no integer value"),
    ("fused", "BLOCK_M=32,BLOCK_N=32,num_warps=4,num_stages=2", "is not a config of the fused kernel"),
    ("split", "BLOCK_M=16,BLOCK_N=64,num_warps=4,num_stages=3", "unknown: BLOCK_M"),
    ("split", "BLOCK_N=256,num_warps=4,num_stages=3", "is not a config of the split kernel"),
])
def test_bad_pins_name_the_variable_and_what_was_expected(no_pins, monkeypatch, kernel, text, message):
    variable = pinning.PIN_ENV[kernel]
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValueError, match=message) as err:
        pinning.check_pins()
    assert variable in str(err.value)
    monkeypatch.delenv(variable)
    with pytest.raises(ValueError, match=message) as err:
        pinning.pin_config(kernel, text)
    assert "pin_config" in str(err.value) and pinning.pinned(kernel) is None


def test_a_misspelt_variable_is_refused(no_pins, monkeypatch):
    monkeypatch.setenv("CIRCUIT_STATS_TRITON_CONFG", "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2")
    with pytest.raises(ValueError, match="CIRCUIT_STATS_TRITON_CONFG.*CIRCUIT_STATS_TRITON_CONFIG"):
        pinning.check_pins()
    with pytest.raises(ValueError, match="kernel must be one of"):
        pinning.pin_config("combine", "num_warps=4")


def test_the_command_line_refuses_a_bad_pin_before_any_work(no_pins, monkeypatch, tmp_path, capsys):
    from circuit_stats import cli

    monkeypatch.setenv("CIRCUIT_STATS_TRITON_SPLIT_CONFIG", "BLOCK_N=64")
    monkeypatch.setattr(cli, "cmd_demo", lambda a: pytest.fail("the command ran"))
    assert cli.main(["demo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "CIRCUIT_STATS_TRITON_SPLIT_CONFIG" in err and "missing: num_warps, num_stages" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, message", [
    # Kept at D=64 without loop statistics, not with every statistic and modifier at D=128.
    (dict(head_dim=128, elt_bytes=2, constexprs={"HAS_TOP1": True}), "not measured spill-free .* head_dim 128"),
    # Only the smallest tiles for fp32.
    (dict(head_dim=64, elt_bytes=4, constexprs={}), "4-byte inputs .* kept for this launch: BLOCK_M=64,BLOCK_N=32"),
])
def test_a_pin_the_launch_does_not_keep_is_refused(no_pins, kwargs, message):
    pinning.pin_config("fused", "BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=2")
    with pytest.raises(ValueError, match=message):
        pinning.fused_pin(**kwargs)
    assert tile_of(pinning.fused_pin(head_dim=64, elt_bytes=2, constexprs={})) == (128, 64, 8, 2)


def test_a_pin_is_checked_against_the_devices_shared_memory(no_pins):
    """At D = 256 the fused tile 64x64 w8 s2 (160 KB) fits an H100's 227 KB and an A100's 163 KB;
    the split tile of 64 keys with 3 stages (200 KB) only the H100's."""
    a100 = 163 * 1024
    pinning.pin_config("fused", "BLOCK_M=64,BLOCK_N=64,num_warps=8,num_stages=2")
    assert tile_of(pinning.fused_pin(head_dim=256, elt_bytes=2, constexprs={}, smem_limit=a100)) == (64, 64, 8, 2)
    pinning.pin_config("split", "BLOCK_N=64,num_warps=4,num_stages=3")
    assert pinning.split_pin(head_dim=256, block_m=16, elt_bytes=2) is not None
    with pytest.raises(ValueError, match=r"needs 201 KB of shared memory at head_dim 256 .* over this GPU's 163 KB"):
        pinning.split_pin(head_dim=256, block_m=16, elt_bytes=2, smem_limit=a100)


def test_a_pin_over_shared_memory_says_so(no_pins):
    pinning.pin_config("fused", "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=2")
    with pytest.raises(ValueError, match=r"needs 321 KB of shared memory at head_dim 256 .* over this GPU's 227 KB"):
        pinning.fused_pin(head_dim=256, elt_bytes=2, constexprs={})
    pinning.pin_config("split", "BLOCK_N=128,num_warps=4,num_stages=4")
    with pytest.raises(ValueError, match=r"pin_config\('split'.* needs 261 KB of shared memory at head_dim 128"):
        pinning.split_pin(head_dim=128, block_m=16, elt_bytes=2)
    pinning.pin_config("split", "BLOCK_N=128,num_warps=4,num_stages=2")  # fits, but 2 stages spill
    with pytest.raises(ValueError, match="not kept at head_dim 64 .*3 or 4 stages.* kept for this launch: BLOCK_N=128"):
        pinning.split_pin(head_dim=64, block_m=16, elt_bytes=2)


# ----------------------------------------------------------------------------------------------
# The launchers run the pinned config, and check it before any launch.

def assert_matches(got, want, dtype, what):
    (out, stats), (ref_out, ref) = got, want
    err = (out.double() - ref_out).abs().max().item()
    assert err <= OUT_TOL[dtype], f"{what}: output off by {err:.3g}"
    for name, r in ref.as_dict().items():
        val = getattr(stats, name).double()
        fin = torch.isfinite(r)
        assert torch.equal(torch.isfinite(val), fin), f"{what}: {name} finite pattern"
        e = (val[fin] - r[fin]).abs().max().item()
        assert e <= STAT_TOL[dtype], f"{what}: {name} off by {e:.3g}"


PIN_CHECKS = dict(offsets=(1, 7), entropy=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_the_fused_launch_runs_the_pinned_tile(no_pins, monkeypatch, dtype, seed, poison_outputs):
    """64x32 tiles (not the interpreter's 16x16): several key tiles, a ragged last query tile."""
    launches = Launches(triton_attention._attn_stats_fwd)
    monkeypatch.setattr(triton_attention, "_attn_stats_fwd", launches)
    monkeypatch.setenv("CIRCUIT_STATS_TRITON_CONFIG", "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2")
    q, k, v, tok, mask = make_inputs(2, 4, 2, 77, 77, 64, dtype, "left")
    got = attention_with_stats(q, k, v, backend="triton", key_padding_mask=mask, token_ids=tok, **PIN_CHECKS)
    want = attention_with_stats_naive(q.double(), k.double(), v.double(), key_padding_mask=mask, token_ids=tok,
                                      **PIN_CHECKS)
    assert [(c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"]) for c in launches.calls] == [(64, 32, 4, 2)]
    assert_matches(got, want, dtype, f"pinned fused {dtype} seed={seed}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_the_split_launch_runs_the_pinned_key_tile(no_pins, monkeypatch, dtype, seed, poison_outputs):
    launches = Launches(triton_decode._decode_split_fwd)
    monkeypatch.setattr(triton_decode, "_decode_split_fwd", launches)
    pinning.pin_config("split", "BLOCK_N=32,num_warps=4,num_stages=3")
    B, Hq, Hkv, Nq, Nk, D = 2, 4, 1, 3, 150, 64
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, "left")
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=tok)
    got = triton_decode.attention_with_stats_decode(q, k, v, StatsRequest(scale=D ** -0.5, **PIN_CHECKS), side,
                                                    split_len=64)  # 3 splits, the last ragged
    want = attention_with_stats_naive(q.double(), k.double(), v.double(), key_padding_mask=mask, token_ids=tok,
                                      **PIN_CHECKS)
    assert [(c["BLOCK_N"], c["num_warps"], c["num_stages"]) for c in launches.calls] == [(32, 4, 3)]
    assert_matches(got, want, dtype, f"pinned split {dtype} seed={seed}")
    with pytest.raises(ValueError, match="multiple of the key tile 32"):
        triton_decode.attention_with_stats_decode(q, k, v, StatsRequest(scale=0.1), side, split_len=48)


def test_a_pin_the_launch_does_not_keep_stops_before_any_launch(no_pins, monkeypatch):
    fused, split = Launches(triton_attention._attn_stats_fwd), Launches(triton_decode._decode_split_fwd)
    monkeypatch.setattr(triton_attention, "_attn_stats_fwd", fused)
    monkeypatch.setattr(triton_decode, "_decode_split_fwd", split)
    q, k, v, _, _ = make_inputs(1, 2, 2, 20, 20, 64, torch.float32, None)
    monkeypatch.setenv("CIRCUIT_STATS_TRITON_CONFIG", "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=2")
    with pytest.raises(ValueError, match="CIRCUIT_STATS_TRITON_CONFIG=.*4-byte inputs"):
        attention_with_stats(q, k, v, backend="triton")
    monkeypatch.setenv("CIRCUIT_STATS_TRITON_SPLIT_CONFIG", "BLOCK_N=64,num_warps=4,num_stages=3")  # 64 x 64 > 2048
    side = SideInputs.build(batch=1, k_len=20, device=q.device)
    with pytest.raises(ValueError, match="CIRCUIT_STATS_TRITON_SPLIT_CONFIG=.*4-byte inputs"):
        triton_decode.attention_with_stats_decode(q[:, :, :2], k, v, StatsRequest(scale=0.1), side)
    assert fused.calls == [] and split.calls == []
    # block= / block_n= (tests, benchmarks) take precedence over a pin.
    triton_attention.attention_with_stats_triton(q, k, v, StatsRequest(scale=0.1), side, block=(16, 16))
    assert [(c["BLOCK_M"], c["BLOCK_N"]) for c in fused.calls] == [(16, 16)] and "num_warps" not in fused.calls[0]
