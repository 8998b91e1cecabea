"""Host time per call of the Triton path, on the CPU, with every Triton launch replaced by a no-op.

    python -m bench.host_overhead            # writes bench/results/host-overhead-cpu-<date>.{json,md}
    python -m bench.host_overhead --quick    # fewer repetitions (harness check)

What is timed is the Python host path around the kernels: validation, side inputs, output
allocation, the token-match band sorts, NaN-row marking, and in ``record()`` the per-layer
reduction. Not included: what a real launch costs the host (Triton's launcher binds the arguments
and calls the driver, tens of microseconds per launch on a GPU), the autotuner's key lookup (under
``TRITON_INTERPRET=1`` the launchers take the fixed interpreter tile), and any GPU time. The
tensors live on the CPU, so each ATen operator here also does its (small) computation on the
CPU; on a GPU each is an asynchronous kernel launch instead. The device-independent figure is
``aten_ops``: the ATen operators per call, each a kernel launch on a GPU. These are CPU host
figures, never GPU timings.

Rows: ``attention_with_stats`` for ``bench.bench_kernel``'s variants (plain; sink + offsets;
all: sink, 3 offsets, token ids, entropy) at B=4, H=16, N=2048, D=128 fp16, and one forward of
a small Pythia-like model (GPT-NeoX, D=256 as Pythia-1B; a left-padded batch of 2 x 128 tokens)
outside and inside ``record()`` with all of those statistics, per layer: the forward's time and
ATen operators over its layers (the model's own included) and ``attention_fn_us_per_call``, the
median host time of one call of the attention function. The cProfile top entries of each are printed and stored.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # the Triton path on the CPU (before any kernel module loads)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from bench.common import environment, write_results  # noqa: E402

KERNEL_SHAPE = dict(B=4, H=16, N=2048, D=128)
OFFSETS = (1, 2, 3)
MODEL = dict(vocab_size=512, hidden=512, layers=8, heads=2)  # head dim 256, as Pythia-1B
MODEL_BATCH = (2, 128)  # (rows, tokens)
COLUMNS = ["case", "calls", "median_us_per_call", "aten_ops_per_call", "launches_per_call"]
PROFILE_TOP = 15
PACKAGE_FILES = r"/(kernels|models)/[a-z_]+\.py"  # pstats restriction: this package's modules


class NoOpKernel:
    """Stands in for a ``@triton.jit`` kernel: launching it does nothing (counts the launch)."""

    def __init__(self, kernel, launches: list):
        self.arg_names, self.fn, self.launches = kernel.arg_names, kernel.fn, launches

    def run(self, *args, **kwargs):
        self.launches.append(1)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(*args, **kwargs)


@contextlib.contextmanager
def no_op_launches() -> Iterator[list]:
    """Replace every Triton kernel of the package by a ``NoOpKernel`` inside the block; yields the
    launch log."""
    from circuit_stats.kernels import triton_attention, triton_decode, triton_key_mass, triton_token_match

    launches: list = []
    sites = [(module, attr, getattr(module, attr)) for module, attr in (
        (triton_attention, "_attn_stats_fwd"), (triton_attention, "FUSED_DECODE_KERNEL"),
        (triton_decode, "_decode_split_fwd"), (triton_decode, "_decode_combine"),
        (triton_token_match, "_token_match_band"), (triton_key_mass, "_key_mass_fwd"))]
    for module, attr, kernel in sites:
        setattr(module, attr, NoOpKernel(kernel, launches))
    try:
        yield launches
    finally:
        for module, attr, kernel in sites:
            setattr(module, attr, kernel)


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators run inside it."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def measure(name: str, fn: Callable[[], object], calls_per_run: int, launches: list, rep: int) -> tuple[dict, str]:
    """(row, cProfile top entries) of ``fn``, which makes ``calls_per_run`` calls."""
    for _ in range(3):
        fn()
    with OpCounter() as ops:
        del launches[:]
        fn()
    n_launches = len(launches)
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(max(rep // 4, 1)):
        fn()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(PROFILE_TOP)
    text.write("The package's own functions, by cumulative time:\n")
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(PACKAGE_FILES, PROFILE_TOP)
    row = {"case": name, "calls": calls_per_run,
           "median_us_per_call": statistics.median(times) / calls_per_run * 1e6,
           "aten_ops_per_call": ops.n / calls_per_run, "launches_per_call": n_launches / calls_per_run}
    return row, text.getvalue()


def kernel_cases(rep: int, launches: list) -> list[tuple[dict, str]]:
    from circuit_stats.kernels import attention_with_stats

    B, H, N, D = KERNEL_SHAPE.values()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g).half() for _ in range(3))
    tok = torch.randint(0, 50000, (B, N), generator=g)
    variants = {
        "kernel ours-plain": dict(),
        "kernel ours-sink-offsets": dict(offsets=OFFSETS),
        "kernel ours-all": dict(offsets=OFFSETS, token_ids=tok, entropy=True),
    }
    rows = [measure(name, lambda kw=kw: attention_with_stats(q, k, v, backend="triton", **kw), 1, launches, rep)
            for name, kw in variants.items()]
    try:  # the output alone, as a model outside record() asks for it (where this version has it)
        from circuit_stats.kernels.dispatch import attention_output
    except ImportError:
        return rows
    return rows + [measure("kernel ours-plain, output only (attention_output)",
                           lambda: attention_output(q, k, v, backend="triton"), 1, launches, rep)]


def model_cases(rep: int, launches: list) -> list[tuple[dict, str]]:
    from circuit_stats.models import record, set_backend, tiny_model

    cfg = MODEL
    model = tiny_model("pythia", vocab_size=cfg["vocab_size"], hidden=cfg["hidden"], layers=cfg["layers"],
                       heads=cfg["heads"])
    rows, n = MODEL_BATCH
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab_size"], (rows, n), generator=g)
    mask = torch.ones(rows, n, dtype=torch.long)
    mask[1:, : n // 8] = 0  # a left-padded batch, as generate() makes
    layers = cfg["layers"]

    def forward():
        with torch.no_grad():
            model(ids, attention_mask=mask, use_cache=False)

    def recorded():
        with record(model, offsets=OFFSETS, token_match=True, entropy=True):
            forward()

    timed_attention = AttentionTimer()
    out = []
    set_backend("triton")
    try:
        for name, fn in (("model forward, outside record()", forward), ("model forward, record(all)", recorded)):
            with timed_attention:
                row, prof = measure(name + " (per layer)", fn, layers, launches, rep)
            row["attention_fn_us_per_call"] = timed_attention.median_us()
            out.append((row, prof))
    finally:
        set_backend("auto")
    return out


class AttentionTimer:
    """Times every call of the registered attention function (host time, kernels are no-ops)."""

    def __init__(self):
        self.times: list[float] = []

    def __enter__(self):
        from circuit_stats.models import attention
        from transformers import AttentionInterface

        self.times = []
        real = attention.circuit_stats_attention

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.times.append(time.perf_counter() - t0)
        self.real = real
        AttentionInterface.register("circuit_stats", timed)
        return self

    def __exit__(self, *exc):
        from transformers import AttentionInterface

        AttentionInterface.register("circuit_stats", self.real)

    def median_us(self) -> float:
        return statistics.median(self.times) * 1e6


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (harness check)")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--name", default="host-overhead")
    p.add_argument("--label", default="", help="a note stored with the results (e.g. 'before')")
    a = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # host figures: one thread, as the launching thread on a GPU machine
    rep = 2 if a.quick else 40
    try:
        with no_op_launches() as launches:
            measured = kernel_cases(rep, launches) + model_cases(max(rep // 4, 2), launches)
    finally:
        torch.set_num_threads(threads)
    rows = [row for row, _ in measured]
    for row, prof in measured:
        print(f"== {row['case']}: {row['median_us_per_call']:.0f} us per call (CPU host), "
              f"{row['aten_ops_per_call']:.1f} ATen ops, {row['launches_per_call']:.1f} launches")
        print(prof)
    env = {**environment("cpu"), "host_only": True, "commit": git_commit(), "label": a.label}
    jpath, mpath = write_results(a.name + ("-quick" if a.quick else ""), env, rows,
                                 COLUMNS + ["attention_fn_us_per_call"], a.out_dir,
                                 extra={"kernel_shape": KERNEL_SHAPE, "model": MODEL, "model_batch": MODEL_BATCH,
                                        "offsets": list(OFFSETS), "launches": "no-ops (Triton kernels replaced)",
                                        "profiles": {row["case"]: prof for row, prof in measured}})
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
