"""bench/autotune_report.py: what the project's autotuners chose (per length bucket), and the pins."""

import torch
from bench import autotune_report
from circuit_stats.kernels import autotune, pinning


def test_choices_of_a_length_bucketed_tuner_name_the_kernel_and_the_buckets():
    import triton.language as tl

    def kernel_fn(Q, Nq, Nk, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pass

    class Kernel:  # what the autotuner wraps: a kernel that does nothing when run
        fn, arg_names = staticmethod(kernel_fn), ["Q", "Nq", "Nk", "HEAD_DIM", "BLOCK_M", "BLOCK_N"]

        def run(self, *args, **kwargs):
            pass

    tuner = autotune.fused_tuner(Kernel(), do_bench=lambda call, quantiles: [1.0] * len(quantiles))
    tuner[(1,)](torch.zeros(1, dtype=torch.float16), 300, 5000, HEAD_DIM=64, **autotune.length_buckets(300, 5000))
    (row,) = autotune_report.tuner_choices([tuner])
    assert row["kernel"] == "kernel_fn" and row["key"] == {"HEAD_DIM": "64", "Q_LEN_BUCKET": "512",
                                                           "K_LEN_BUCKET": "8192"}
    assert row["key_extra"] == ["torch.float16"] and row["config"]["BLOCK_M"] == 128


def test_pinned_configs_are_reported(monkeypatch):
    monkeypatch.setattr(pinning, "_PINS", {})
    monkeypatch.delenv("CIRCUIT_STATS_TRITON_SPLIT_CONFIG", raising=False)
    monkeypatch.setenv("CIRCUIT_STATS_TRITON_CONFIG", "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2")
    assert autotune_report.pinned_configs() == {"fused": "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2"}
    monkeypatch.setenv("CIRCUIT_STATS_TRITON_CONFIG", "BLOCK_M=64")
    assert "missing: BLOCK_N" in autotune_report.pinned_configs()["error"]


def test_the_kernel_modules_autotuners_are_found_without_scanning_the_heap(monkeypatch):
    """Every autotuner of the kernel modules (module attributes and the key-mass pass's dict of
    them), each once, and a dead weak proxy anywhere (which made ``isinstance`` over
    ``gc.get_objects()`` raise ReferenceError on the H200) changes nothing."""
    import gc
    import sys
    import types
    import weakref

    from circuit_stats.kernels import triton_attention, triton_decode, triton_key_mass

    class Gone:
        pass

    obj = Gone()
    proxy = weakref.proxy(obj)
    del obj
    gc.collect()
    fake = types.ModuleType("circuit_stats.kernels.fake_for_test")
    fake.PROXY, fake.PROXIES = proxy, [proxy]
    fake.ALIAS = {"fused": triton_attention.FUSED_TUNER}  # found twice, listed once
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(gc, "get_objects", lambda *a: [proxy])  # were the heap scanned, this would raise
    found = autotune_report.autotuners()
    expected = [triton_attention.FUSED_TUNER, triton_attention.FUSED_DECODE_TUNER, triton_decode.SPLIT_TUNER]
    assert all(any(t is f for f in found) for t in expected) and len({id(t) for t in found}) == len(found)
    key_mass = {autotune_report.kernel_name(t) for t in found} - {autotune_report.kernel_name(t) for t in expected}
    assert key_mass == {triton_key_mass.KEY_MASS_KERNEL.__name__}  # its tuners sit in a dict, one per bucket
    assert len(found) == len(expected) + 2
    assert autotune_report.tuner_choices() == autotune_report.tuner_choices(found)
