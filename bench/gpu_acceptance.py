"""First-GPU acceptance run: one command for an H100/H200 that tests, benchmarks and reports in
at most 8 minutes, from a cold start (every first launch compiles its configs).

    python -m bench.gpu_acceptance                  # everything, into $OUT or bench/results/gpu-acceptance-<time>
    python -m bench.gpu_acceptance --dry-run        # the plan with time estimates (no GPU needed)
    python -m bench.gpu_acceptance --steps environment,kernel-tests --out /tmp/acc

Steps run in order of value (what a timeout would lose least comes last), each as a subprocess
under its own budget; a failing or timed-out step is recorded and the rest still run, and the
exit status is 1 when any step failed. The output directory gets ``summary.md`` (Markdown for the
README), ``acceptance.json`` (everything), ``steps.log`` and the benchmarks' own result files: at
most 8 files, as the device tool brings back. Estimates come from the first H200 run
(bench/results/gpu-acceptance-2026-12-04-h200: steps[].seconds, cold) scaled to this plan.

Compile time dominates a cold machine: the first launch of each autotune key compiles every kept
config (3-9 s each). So the test steps run under pytest-xdist with all cores but two and the HF
families in one process each, overlapping compiles; steps that only need some config (the HF
families' correctness checks, the model benchmark) pin one (``kernels.pinning``) instead of
tuning. Warming Triton's cache with ``kernels.aot`` was not adopted: it helps only if its compile
keys equal the runtime's exactly, which no GPU has confirmed yet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from bench.acceptance_runner import FAILING, Step, junit_path, run_plan

LIMIT_S = 480.0  # 8 minutes, cold
OVERHEAD_S = 15.0  # the runner itself, the report, interpreter start-ups
RESULTS = Path(__file__).resolve().parent / "results"
DECODE_TESTS = "tests/kernels/test_triton_decode.py"
# The GPU subset: the fused kernel against float64 (every dtype, head dim, statistic, padding,
# GQA/MQA, decode) and the split-decode kernel's float64 check and routing. On the H200, 8 workers
# ran 93 tests of these files in 140 s cold; a warm rerun of the 111 fused-kernel tests took 42 s.
KERNEL_TEST_FILES = ("tests/kernels/test_attention_correctness.py",
                     *(f"{DECODE_TESTS}::{name}" for name in (
                         "test_split_decode_matches_float64", "test_split_length_does_not_change_results",
                         "test_hook_routes_long_decode_to_split_kernel",
                         "test_hook_routes_long_decode_with_every_feature_to_split_kernel")))
MORE_KERNEL_TEST_FILES = ("tests/kernels/test_score_modifiers.py", "tests/kernels/test_triton_head_dims.py",
                          "tests/kernels/test_plain_path.py", "tests/kernels/test_nan_inputs.py",
                          *(f"{DECODE_TESTS}::{name}" for name in (
                              "test_split_decode_long_context_statistics_and_modifiers",
                              "test_split_decode_range_segments_match_float64",
                              "test_split_decode_top1_exact_ties_go_to_the_first_key")))
# Pins (kernels.pinning) for steps that need a config, not the best one. The HF families' tiny
# models have head dim 16: 64x32 w4 s2 and 32-key splits with 3 stages are kept there at every
# loop level, 16-bit and fp32 (and 64x32 w4 s2 by the multi-GPU check's D = 128 bf16 launch with
# entropy); the model benchmark's D = 256 bf16 launches all keep 64x32 w8 s2 (the autotuner chose
# it for record() there on the H200).
HF_PINS = {"CIRCUIT_STATS_TRITON_CONFIG": "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2",
           "CIRCUIT_STATS_TRITON_SPLIT_CONFIG": "BLOCK_N=32,num_warps=4,num_stages=3"}
MULTI_GPU_PINS = {"CIRCUIT_STATS_TRITON_CONFIG": HF_PINS["CIRCUIT_STATS_TRITON_CONFIG"]}
MODEL_BENCH_PINS = {"CIRCUIT_STATS_TRITON_CONFIG": "BLOCK_M=64,BLOCK_N=32,num_warps=8,num_stages=2"}
MODEL_TEST_FILES = ("tests/models/test_conformance.py", "tests/models/test_recording.py")
# Every config the autotuner may choose, at D = 64/128/256, every loop level, prefill and decode,
# with and without padding, bf16, against float64 (60 tests; each compiles its level's 1-4 configs).
TILE_TEST_FILES = ("tests/kernels/test_every_kept_tile.py",)


def pytest_command(files: Sequence[str], workers: int) -> tuple[str, ...]:
    """pytest on ``files`` with a junit file; ``workers`` > 1 uses pytest-xdist (compiles run in
    parallel: the first launch of each autotune key compiles every kept config)."""
    parallel = ("-n", str(workers)) if workers > 1 else ()
    return (sys.executable, "-m", "pytest", *files, "-q", "-rfEs", "-p", "no:cacheprovider", "--junitxml={junit}",
            *parallel)


def xdist_workers() -> int:
    """Parallel pytest workers (and HF family processes): every core but two (14 on the H200's
    16), 1 where pytest-xdist is missing."""
    from importlib.util import find_spec

    if find_spec("xdist") is None:
        return 1
    return max(1, (os.cpu_count() or 2) - 2)


def bench_command(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "bench.autotune_report", "--json", "{result}", module, *args, "--out-dir", "{out}")


def default_steps(seed: int, workers: int) -> list[Step]:
    """The plan, most valuable first. Budgets sum to at most ``LIMIT_S - OVERHEAD_S``; estimates
    are the H200's cold seconds (environment 0.2, install 4, multi-gpu 5; the others scaled from
    it: see each step)."""
    py = sys.executable
    tests_env = {"CIRCUIT_STATS_SEED": str(seed), "PYTHONUNBUFFERED": "1"}
    return [
        Step("environment", "GPU, driver, CUDA, package versions", (py, "-m", "bench.acceptance_env", "--json", "{result}"),
             estimate_s=2, budget_s=10, needs_gpu=False),
        Step("install", "the checkout imports as circuit_stats (offline editable install if not)",
             (py, "-m", "bench.acceptance_env", "--ensure-installed"), estimate_s=5, budget_s=20, needs_gpu=False),
        # 126 tests on a GPU (bf16 too); 93 took 140 s with 8 workers cold: ~110 s with 14.
        Step("kernel-tests", "fused kernel bf16/fp16/fp32 vs float64, split decode vs float64 and its routing",
             pytest_command(KERNEL_TEST_FILES, workers), estimate_s=110, budget_s=135, env=tests_env),
        # 5 s to skip on one GPU; on two, one pinned compile more.
        Step("multi-gpu", "fused kernel on cuda:1 vs float64 (skipped on one GPU)",
             (py, "-m", "bench.acceptance_multi_gpu", "--json", "{result}"), estimate_s=6, budget_s=20,
             env=MULTI_GPU_PINS),
        # 7 families x 2 dtypes took ~80 s warm in 4 processes, over 82 s cold (autotuning each
        # launch): one process per family, configs pinned.
        Step("hf-gpu", "HF families on the GPU (softcap, sinks, GQA, MQA): logits, record(), generate",
             (py, "-m", "bench.acceptance_models", "--json", "{result}", "--jobs", str(workers)), estimate_s=60,
             budget_s=85, env={"PYTHONUNBUFFERED": "1", **HF_PINS}),
        # D = 128 with every variant took 59 s cold; the D = 64/256 plain and SDPA rows add ~6
        # compiles and their timings.
        Step("bench-kernel", "ours vs SDPA flash, FlexAttention, eager: bf16 D=128, N 2k/8k; plain vs SDPA at D=64/256",
             bench_command("bench.acceptance_kernel"), estimate_s=85, budget_s=100, env={"PYTHONUNBUFFERED": "1"}),
        # Everything but xu2026 took ~50 s cold; xu2026 was still compiling at 52 s: pinned.
        Step("bench-model", "Pythia-1B shape forward 2k/8k and xu2026 (64 sequences), one pinned config",
             bench_command("bench.bench_model", "--models", "pythia-1b-shape", "--lengths", "2048,8192",
                           "--xu-sequences", "64"), estimate_s=75, budget_s=95,
             env={"PYTHONUNBUFFERED": "1", **MODEL_BENCH_PINS}),
    ]


def optional_steps(seed: int, workers: int) -> list[Step]:
    """Steps outside the default plan (``--steps`` names them): they do not fit 8 minutes."""
    tests_env = {"CIRCUIT_STATS_SEED": str(seed), "PYTHONUNBUFFERED": "1"}
    return [Step("kernel-tests-more", "score modifiers, padded head dims, plain path, NaN inputs",
                 pytest_command(MORE_KERNEL_TEST_FILES, workers), estimate_s=150, budget_s=200, env=tests_env),
            # Not yet run on a GPU: about 200 compiles at 3-9 s on every core but two.
            Step("kernel-tiles", "every tile the autotuner may choose (D 64/128/256, every loop level, bf16) vs float64",
                 pytest_command(TILE_TEST_FILES, workers), estimate_s=120, budget_s=170, env=tests_env),
            # tests/models build their models on the CPU: on a GPU machine they run as in CI
            # (interpreter), a check of the machine's transformers release, not of the GPU.
            Step("model-tests", "HF conformance/generate/recording tests on the CPU (as CI)",
                 pytest_command(MODEL_TEST_FILES, workers), estimate_s=150, budget_s=200,
                 env={**tests_env, "TRITON_INTERPRET": "1"}),
            # Not yet run on a GPU: the estimate counts compiles (D = 128 bf16: six launch kinds,
            # 21 kept configs at 3-9 s each, and the band kernel), then 20 timed rows.
            Step("bench-statistics", "issue 23: statistics over plain attention, band vs in-loop token matching, "
                 "per token stream (bf16 D=128, N 4k/16k)", bench_command("bench.acceptance_statistics"),
                 estimate_s=170, budget_s=240, env={"PYTHONUNBUFFERED": "1"})]


def select_steps(names: Optional[str], seed: int, workers: int) -> list[Step]:
    """The default plan, or the named steps in plan order; unknown names raise ValueError."""
    default = default_steps(seed, workers)
    if not names:
        return default
    every = default + optional_steps(seed, workers)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {s.name for s in every})
    if unknown or not wanted:
        raise ValueError(f"--steps: unknown step(s) {unknown or names!r}; expected a comma list of "
                         f"{', '.join(s.name for s in every)}")
    return [s for s in every if s.name in wanted]


def plan_seconds(steps: Sequence[Step]) -> dict:
    return {"estimate_s": sum(s.estimate_s for s in steps) + OVERHEAD_S,
            "budget_s": sum(s.budget_s for s in steps) + OVERHEAD_S, "limit_s": LIMIT_S}


def plan_text(steps: Sequence[Step]) -> str:
    totals = plan_seconds(steps)
    lines = [f"{'step':<18} {'estimate':>8} {'budget':>7}  purpose"]
    lines += [f"{s.name:<18} {s.estimate_s:>7.0f}s {s.budget_s:>6.0f}s  {s.purpose}" for s in steps]
    lines.append(f"{'runner overhead':<18} {OVERHEAD_S:>7.0f}s {OVERHEAD_S:>6.0f}s")
    lines.append(f"{'total':<18} {totals['estimate_s']:>7.0f}s {totals['budget_s']:>6.0f}s  "
                 f"(limit {LIMIT_S:.0f} s; budgets are hard limits)")
    return "\n".join(lines)


def output_dir(arg: Optional[str]) -> Path:
    """``--out``, else ``$OUT`` (the device tool's folder), else a dated folder under bench/results/."""
    if arg:
        return Path(arg)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return RESULTS / ("gpu-acceptance-" + dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d-%H%M"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run(steps: list[Step], out: Path, seed: int) -> int:
    """Run the plan into ``out``; 1 when any step failed, timed out or was not run."""
    from bench.acceptance_summary import junit_summary, write_report

    out.mkdir(parents=True, exist_ok=True)
    limit = min(LIMIT_S - OVERHEAD_S, plan_seconds(steps)["budget_s"])
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as tmp:
        scratch = Path(tmp)
        records = run_plan(steps, scratch, out, limit)
        for step, record in zip(steps, records):
            junit = junit_summary(junit_path(step, scratch))
            if junit is not None:
                record["junit"] = junit
    env = next((r.get("result") for r in records if r["step"] == "environment" and r.get("result")), None)
    if env is None:
        from bench.acceptance_env import environment

        env = environment()
    summary, doc = write_report(out, env, records, seed, plan_seconds(steps))
    print(summary.read_text())
    print(f"wrote {summary} and {doc}")
    return 1 if any(r["status"] in FAILING for r in records) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate, run nothing")
    p.add_argument("--steps", help="comma list of steps to run (default: the whole plan)")
    p.add_argument("--out", help="output directory (default: $OUT, else bench/results/gpu-acceptance-<time>)")
    p.add_argument("--seed", type=int, help="CIRCUIT_STATS_SEED for the test steps (default: random, recorded)")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(2**31)
    try:
        steps = select_steps(a.steps, seed, xdist_workers())
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(plan_text(steps))
    if plan_seconds(steps)["estimate_s"] > LIMIT_S:
        print(f"error: the plan's estimate exceeds {LIMIT_S:.0f} s; select fewer --steps", file=sys.stderr)
        return 2
    if a.dry_run:
        print("dry run: nothing executed")
        return 0
    if any(s.needs_gpu for s in steps) and not cuda_available():
        print("error: no CUDA GPU here; the steps " + ", ".join(s.name for s in steps if s.needs_gpu)
              + " need one (use --dry-run, or --steps environment)", file=sys.stderr)
        return 2
    return run(steps, output_dir(a.out), seed)


if __name__ == "__main__":
    sys.exit(main())
