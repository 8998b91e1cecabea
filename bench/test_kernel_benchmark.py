"""pytest-benchmark smoke runs, CI-sized: ``pytest bench -q`` (CPU: torch backend; GPU: Triton).
Real numbers come from ``python -m bench.bench_kernel`` on a GPU, never from these."""

import pytest
import torch

from bench.bench_kernel import make_variant

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "triton" if DEVICE == "cuda" else "torch"
N = 1024 if DEVICE == "cuda" else 128


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    q, k, v = (torch.randn(1, 4, N, 64, generator=g).to(DEVICE, dtype) for _ in range(3))
    return q, k, v, torch.randint(0, 1000, (1, N), generator=g).to(DEVICE)


@pytest.mark.parametrize("variant", ["ours-plain", "ours-sink-offsets", "ours-all", "sdpa-flash", "eager"])
def test_attention_variant(benchmark, inputs, variant):
    fn = make_variant(variant, *inputs, backend=BACKEND)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    benchmark(lambda: (fn(), sync()))
