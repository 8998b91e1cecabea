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
