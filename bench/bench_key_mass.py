"""CPU cost of ``key_mass`` in the torch backend (issue 24 item 1), on the Pythia-70M attention shape.

    python -m bench.bench_key_mass [--lengths 2048 4096] [--repeats 5]

One attention call ``[1, 8, N, 64]`` fp32, interleaved rounds, medians: with ``entropy`` (a
record()-like call on the chunked path) with and without ``key_mass``, ``key_mass`` alone, and
the SDPA path (no statistic) for scale. The load average is recorded before and after: the
machine is shared, so the ratios, measured in the same rounds, mean more than the seconds.
Writes ``bench/results/key-mass-cpu-<machine>-<date>.json`` (+ ``.md``).
"""

from __future__ import annotations

import argparse
import os

import torch

from circuit_stats.kernels import attention_with_stats

from .bench_cpu import HEAD_DIM, HEADS, interleaved
from .common import environment, write_results

COLUMNS = ["n", "sdpa_path_s", "entropy_s", "entropy_key_mass_s", "key_mass_s", "key_mass_extra_vs_entropy",
           "load_before", "load_after"]


def measure(n: int, repeats: int) -> dict:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM) for _ in range(3))
    load_before = os.getloadavg()[0]
    t = interleaved({
        "sdpa_path_s": lambda: attention_with_stats(q, k, v),
        "entropy_s": lambda: attention_with_stats(q, k, v, entropy=True),
        "entropy_key_mass_s": lambda: attention_with_stats(q, k, v, entropy=True, key_mass=True),
        "key_mass_s": lambda: attention_with_stats(q, k, v, key_mass=True),
    }, repeats)
    return dict(n=n, **t, key_mass_extra_vs_entropy=t["entropy_key_mass_s"] / t["entropy_s"] - 1,
                load_before=load_before, load_after=os.getloadavg()[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    rows = [measure(n, a.repeats) for n in a.lengths]
    env = dict(environment("cpu"), threads=torch.get_num_threads(), cpus=os.cpu_count())
    paths = write_results("key-mass-cpu", env, rows, COLUMNS,
                          extra=dict(note="shared machine: see load_before/load_after (1-minute load average)"))
    print(*paths, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
