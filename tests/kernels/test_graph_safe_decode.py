"""Graph-safe decode (issue 22 item 4): a decode step makes no host-to-device copy and never
synchronises the host when nothing is padded, its kernels do not recompile as the keys grow, and
grids beyond CUDA's limits fail clearly before any launch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from circuit_stats.kernels import SideInputs, attention_with_stats, triton_attention, triton_decode
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels.triton_common import TorchTensors
from host_traffic import count_launches_apart


@pytest.fixture
def traffic(monkeypatch):
    return count_launches_apart(monkeypatch)


def test_host_traffic_counts_copies_and_synchronisations(traffic):
    """The counter itself: it sees what the decode test must not find."""
    x = torch.ones(3)
    with traffic.counting():
        torch.tensor([1, 2], dtype=torch.int32)
        float(x.sum())
        bool((x > 0).any())
        x.tolist()
        x.to("meta")
    assert traffic.events == ["torch.tensor", "__float__", "__bool__", "tolist", "to(meta)"]


# Every statistic and modifier that needs no per-forward side input (token ids, probes and span
# are validated when their SideInputs are built: one synchronisation per forward, not per layer).
DECODE_STATS = dict(offsets=(1, 4), entropy=True, distance=True, local_window=5, top1=True, window=40, softcap=30.0)


@pytest.mark.parametrize("n_keys, kernels", [(29, ["fused"]), (515, ["split", "combine"])], ids=["fused", "split"])
def test_decode_steps_copy_nothing_and_never_synchronise(n_keys, kernels, traffic, seed):
    """Decode steps (one query, one more key each step, across a multiple of 16) through
    ``attention_with_stats`` with every statistic: after the first step (which caches the
    offsets' index tensor on the device) no step copies to the device or reads a value."""
    B, Hq, Hkv, D, steps = 2, 4, 2, 16, 5
    k_all, v_all = torch.randn(B, Hkv, n_keys + steps, D), torch.randn(B, Hkv, n_keys + steps, D)
    sinks = torch.randn(Hq)

    def step(i):
        nk = n_keys + i
        q = torch.randn(B, Hq, 1, D)
        return attention_with_stats(q, k_all[:, :, :nk], v_all[:, :, :nk], backend="triton", sinks=sinks,
                                    **DECODE_STATS)

    step(0)
    traffic.launched.clear()
    with traffic.counting():
        results = [step(i) for i in range(1, steps)]
    assert traffic.events == [], f"host copies / synchronisations in {steps - 1} decode steps: {traffic.events}"
    assert traffic.launched == kernels * (steps - 1), traffic.launched
    for out, st in results:  # the steps computed something (rows with keys: finite, lse finite)
        assert torch.isfinite(out).all() and torch.isfinite(st.lse).all()


def test_offsets_are_copied_to_the_device_once(traffic):
    """A new set of offsets costs one copy, at its first launch; the next launch reuses it."""
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 1, 20, 16)
    offsets = (2, 3, 5, 7, 11, 13)  # a tuple no other test uses: not cached yet
    with traffic.counting():
        attention_with_stats(q, k, k, backend="triton", offsets=offsets)
        first = list(traffic.events)
        attention_with_stats(q, k, k, backend="triton", offsets=offsets)
    assert first == ["torch.tensor"] and traffic.events == first


# ------------------------------------------------------------------------------------ grids

@pytest.mark.parametrize("batch, heads", [(1, 65536), (257, 256)], ids=["heads", "batch x heads"])
def test_fused_launch_refuses_a_grid_over_cuda_limits(batch, heads, monkeypatch):
    """One program per (batch, query head) on grid axis y: more than 65535 fail before anything
    is allocated or launched, naming the axis."""
    monkeypatch.setattr(triton_attention, "launch_arguments", lambda *a, **k: pytest.fail("launch built"))
    q, k = torch.randn(batch, heads, 1, 1), torch.randn(batch, 1, 1, 1)
    with pytest.raises(ValueError, match=f"fused kernel's grid axis y \\(batch x query heads\\) is {batch * heads}, "
                                         "more than CUDA allows \\(65535\\)"):
        attention_with_stats(q, k, k, backend="triton")


def test_fused_grid_at_the_limit_is_launched():
    """65535 (batch, head) programs is still a valid grid (shape-only launch)."""
    from circuit_stats.kernels import aot

    launch = aot.variant_launch(aot.CompileVariant(16, "fp16", "none", q_len=40, k_len=40, batch=5, heads=13107,
                                                   kv_heads=13107))
    assert launch.grid(16) == (3, 65535)


def test_split_decode_refuses_a_grid_over_cuda_limits(monkeypatch):
    monkeypatch.setattr(triton_decode, "split_kernel_args", lambda *a, **k: pytest.fail("launch built"))
    q, k = torch.randn(1, 65536, 1, 1), torch.randn(1, 65536, 32, 1)
    side = SideInputs.build(batch=1, k_len=32, device=q.device)
    with pytest.raises(ValueError, match=r"split-decode kernel's grid axis z \(batch x kv heads\) is 65536"):
        triton_decode.attention_with_stats_decode(q, k, k, StatsRequest(scale=1.0), side, split_len=16)


# ------------------------------------------------------------------------------ recompiles

SPECIALIZATION_SCRIPT = """
import json, sys, triton
from circuit_stats.kernels import aot
out = {}
for name, kernel, q_len, lengths in json.loads(sys.argv[1]):
    spec = [aot.CompileVariant(64, "bf16", "all", q_len=q_len, k_len=n, kernel=kernel) for n in lengths]
    config = aot.candidate_configs(spec[0])[0]
    out[name] = [aot.specialization(v, config) for v in spec]
print(json.dumps(out))
"""
# (name, kernel, q_len, key lengths whose launches must share one compiled kernel). Decode steps
# walk Nk through multiples of 16 (Triton specialises integers on divisibility by 16) and the
# combine's split count through them (7680 and 8192 keys: 15 and 16 splits of 512).
NO_RECOMPILE = [("fused decode", "fused", 1, [4095, 4096, 4097]), ("split", "split", 1, [4095, 4096]),
                ("combine", "combine", 1, [7680, 8192])]


def test_decode_kernels_do_not_recompile_as_the_keys_grow():
    """Triton's own binder (in a process without the interpreter) gives the decode launches of
    consecutive key lengths one specialization; as a control, one query or two do differ
    (``Nq == 1`` is specialised on purpose: it is fixed for a whole generation)."""
    cases = NO_RECOMPILE + [("control", "fused", 2, [4096])]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SPECIALIZATION_SCRIPT, json.dumps(cases)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    specs = json.loads(proc.stdout.splitlines()[-1])
    for name, *_ in NO_RECOMPILE:
        assert len(set(specs[name])) == 1, f"{name}: the key lengths compile separately"
    assert specs["control"][0] != specs["fused decode"][1], "the binder's specialization ignores Nq: no control"


def test_side_inputs_are_checked_with_one_synchronisation(traffic):
    """Token ids, probe keys and span are checked with one read of the device in all; padding
    alone needs none."""
    B, Nk = 2, 12
    mask = torch.ones(B, Nk, dtype=torch.bool)
    mask[0, :3] = False
    with traffic.counting():
        SideInputs.build(batch=B, k_len=Nk, device=torch.device("cpu"), key_padding_mask=mask)
        assert traffic.events == []
        SideInputs.build(batch=B, k_len=Nk, device=torch.device("cpu"), key_padding_mask=mask,
                         token_ids=torch.randint(0, 50, (B, Nk)), probe_keys=torch.tensor([[0, 5], [3, 11]]),
                         span=torch.tensor([[0, 4], [2, 12]]))
    assert traffic.events == ["torch.tensor", "torch.tensor", "tolist"]  # the two literals above, one read


# ------------------------------------------------------------------------------ launches by name

def test_heuristic_flags_reach_the_autotune_keys(monkeypatch):
    """Absent tensors are passed as None and ``triton.heuristics`` derives the flags before the
    autotuner sees the arguments, so every flag is part of its key (launches that differ only in
    which statistics they compute are tuned apart; the tensors' dtypes alone could not tell). The
    tuned launch path, with the autotuners replaced by recorders of what they are called with."""
    from circuit_stats.kernels import autotune

    seen = {}

    class TunerRecorder:
        def __init__(self, name, tuner):
            self.name, self.arg_names, self.keys = name, tuner.arg_names, tuner.keys

        def run(self, *args, grid, warmup, **kwargs):
            assert set(self.keys) <= set(kwargs), f"{self.name}: key entries not passed: {set(self.keys) - set(kwargs)}"
            seen[self.name] = kwargs

    keys = {}
    for module, attr in ((triton_attention, "FUSED_TUNER"), (triton_attention, "FUSED_DECODE_TUNER"),
                         (triton_decode, "SPLIT_TUNER")):
        keys[attr] = getattr(module, attr).keys
        monkeypatch.setattr(module, attr, TunerRecorder(attr, getattr(module, attr)))
    for module in (triton_attention, triton_decode):
        monkeypatch.setattr(module, "interpreting", lambda: False)  # the GPU's path: autotuned
    monkeypatch.setattr(triton_decode, "_decode_combine", type("Combine", (), dict(
        arg_names=triton_decode._decode_combine.arg_names, run=lambda self, *a, **k: None))())
    q, k = torch.randn(1, 2, 20, 16), torch.randn(1, 1, 20, 16)
    side = SideInputs.build(batch=1, k_len=20, device=q.device, token_ids=torch.randint(0, 9, (1, 20)))
    request = StatsRequest(scale=0.25, offsets=(1, 2), entropy=True, top1=True)
    triton_attention.attention_with_stats_triton(q, k, k, request, side)
    triton_attention.attention_with_stats_triton(q[:, :, :1], k, k, request, side)
    triton_decode.attention_with_stats_decode(q[:, :, :1], k, k, request, side, split_len=128)
    for name, rules in (("FUSED_TUNER", triton_attention.FUSED_HEURISTICS),
                        ("FUSED_DECODE_TUNER", triton_attention.FUSED_HEURISTICS),
                        ("SPLIT_TUNER", triton_decode.SPLIT_HEURISTICS)):
        assert set(rules) <= set(keys[name]) and set(rules) <= set(seen[name]), name
    assert seen["FUSED_TUNER"]["N_OFFSETS"] == 2 and seen["FUSED_TUNER"]["HAS_TOK"]
    assert seen["FUSED_TUNER"]["HAS_TOP1"] and not seen["FUSED_TUNER"]["HAS_DIST"]
    assert set(autotune.LENGTH_BUCKET_ARGS) <= set(seen["SPLIT_TUNER"])


def test_padded_launches_read_the_padding_mask_built_once():
    """The fused and split-decode launches pass the int8 padding mask ``SideInputs.build`` made:
    no conversion per launch (every layer of a forward shares one side-inputs object)."""
    B, Hq, Hkv, Nk, D = 2, 4, 2, 48, 16
    mask = torch.ones(B, Nk, dtype=torch.bool)
    mask[1, :5] = False
    side = SideInputs.build(batch=B, k_len=Nk, device=torch.device("cpu"), key_padding_mask=mask)
    q, k, v = torch.randn(B, Hq, 1, D), torch.randn(B, Hkv, Nk, D), torch.randn(B, Hkv, Nk, D)
    request = StatsRequest(scale=D ** -0.5, entropy=True)
    fused = triton_attention.launch_arguments(q, k, v, request, side).args["KPM"]
    split, _ = triton_decode.split_kernel_args(q, k, v, torch.empty(0), torch.empty(0), side, request=request,
                                               flags=request.flags(side), split_len=16,
                                               tensors=TorchTensors(q.device))
    assert side.padding_int8 is not None
    assert fused is side.padding_int8 and split["KPM"] is side.padding_int8
