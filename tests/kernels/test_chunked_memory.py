"""The torch backend's peak extra memory must grow linearly with N, never quadratically."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.torch_only  # the torch backend alone

PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from circuit_stats.kernels import attention_with_stats
    n = int(sys.argv[1])
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 16) for _ in range(3))
    tok = torch.randint(0, 50, (1, n))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    attention_with_stats(q, k, v, offsets=(1, 2), token_ids=tok, entropy=True, backend="torch")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)
    """
)


def peak_extra_bytes(n: int) -> int:
    res = subprocess.run([sys.executable, "-c", PROBE, str(n)], capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n_small,n_big", [(4096, 16384)])
def test_torch_backend_memory_is_linear_in_n(n_small, n_big):
    small, big = peak_extra_bytes(n_small), peak_extra_bytes(n_big)
    full_matrix_big = n_big * n_big * 4  # what materialising one float32 N x N would take
    assert big < full_matrix_big / 4, f"peak extra {big / 2**20:.0f} MiB at N={n_big}: looks quadratic"
    # 4x the length: linear growth gives ~4x, quadratic ~16x. Allow slack for allocator noise.
    assert big <= 8 * max(small, 1 << 20), f"{small / 2**20:.1f} MiB -> {big / 2**20:.1f} MiB for 4x N"
