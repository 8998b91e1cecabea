"""The GPU acceptance command on a CPU: its plan fits 8 minutes, the environment step works, the
runner records failing and timed-out steps and goes on, and every file lands under $OUT."""

import json
import re
import subprocess
import sys

import pytest

from bench import acceptance_multi_gpu, acceptance_runner, acceptance_statistics, autotune_report, gpu_acceptance
from bench.acceptance_env import environment
from bench.acceptance_runner import Step, run_plan

PY = sys.executable
# What the device tool brings back from $OUT: at most 8 files, names of letters, digits, '.', '_', '-'.
DEVICE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def stand_in(name, code, budget_s=30.0):
    return Step(name, f"stand-in {name}", (PY, "-c", code), estimate_s=1, budget_s=budget_s, needs_gpu=False)


def test_dry_run_exits_0_fits_8_minutes_and_imports_no_torch():
    code = ("import sys; from bench import gpu_acceptance as g; rc = g.main(['--dry-run']); "
            "assert 'torch' not in sys.modules, 'the dry run imported torch'; sys.exit(rc)")
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=acceptance_runner.REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dry run: nothing executed" in proc.stdout
    steps = gpu_acceptance.default_steps(seed=1, workers=8)
    totals = gpu_acceptance.plan_seconds(steps)
    assert totals["estimate_s"] <= 480 and totals["budget_s"] <= 480
    for step in steps:
        assert step.name in proc.stdout and 0 < step.estimate_s <= step.budget_s
    assert [s.name for s in steps][:3] == ["environment", "install", "kernel-tests"]
    by_name = {s.name: s for s in steps}
    assert by_name["kernel-tests"].command[-2:] == ("-n", "8") and by_name["hf-gpu"].command[-2:] == ("--jobs", "8")


def test_workers_are_every_core_but_two(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if pytest-xdist were there
    monkeypatch.setattr(gpu_acceptance.os, "cpu_count", lambda: 16)
    assert gpu_acceptance.xdist_workers() == 14
    monkeypatch.setattr(gpu_acceptance.os, "cpu_count", lambda: 2)
    assert gpu_acceptance.xdist_workers() == 1


def test_the_kernel_test_steps_name_existing_tests():
    """Every file and test id of the three kernel-test steps collects (a renamed test would
    otherwise make pytest exit 4 on the GPU), and the default step holds the fused-kernel file."""
    ids = [*gpu_acceptance.KERNEL_TEST_FILES, *gpu_acceptance.MORE_KERNEL_TEST_FILES, *gpu_acceptance.TILE_TEST_FILES]
    proc = subprocess.run([PY, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                          capture_output=True, text=True, cwd=acceptance_runner.REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    for test_id in ids:
        assert any(line.startswith(test_id) for line in collected), f"{test_id} collects nothing"
    assert "tests/kernels/test_attention_correctness.py" in gpu_acceptance.KERNEL_TEST_FILES


@pytest.mark.parametrize("step, head_dim, dtypes, levels", [("hf-gpu", 16, (2, 4), None),
                                                              ("bench-model", 256, (2,), None),
                                                              ("multi-gpu", 128, (2,), ("entropy",))])
def test_the_pinned_steps_pin_configs_every_launch_keeps(monkeypatch, step, head_dim, dtypes, levels):
    """The HF families' tiny models (head dim 16) and the model benchmark (Pythia-1B shape, D = 256,
    bf16) pin configs that every launch keeps, at every loop level, prefill and decode, and the
    multi-GPU check (D = 128 bf16, entropy) one its launch keeps: a pin that a launch does not
    keep is a ValueError there."""
    from circuit_stats.kernels import autotune, pinning
    from circuit_stats.kernels.triton_decode import ROWS_BLOCK

    (found,) = [s for s in gpu_acceptance.default_steps(1, 1) if s.name == step]
    monkeypatch.setattr(pinning, "_PINS", {})
    for name in pinning.PIN_ENV.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in found.env.items():
        monkeypatch.setenv(name, value)
    pinning.check_pins()
    flags = {"none": {}, "modifiers": {"HAS_SOFTCAP": True}, "entropy": {"HAS_ENT": True}, "stats": {"HAS_TOK": True},
             "heavy": {"HAS_TOP1": True}}
    assert set(flags) == set(autotune.LOOP_LEVELS)
    for elt_bytes in dtypes:
        for level, constexprs in flags.items():
            if levels and level not in levels:
                continue
            assert autotune.loop_level(constexprs) == level
            pin = pinning.fused_pin(head_dim=head_dim, elt_bytes=elt_bytes, constexprs=constexprs)
            assert pin is not None and pinning.config_text(pin) == found.env["CIRCUIT_STATS_TRITON_CONFIG"]
        if "CIRCUIT_STATS_TRITON_SPLIT_CONFIG" in found.env:
            assert pinning.split_pin(head_dim=head_dim, block_m=ROWS_BLOCK, elt_bytes=elt_bytes) is not None


def test_a_pytest_step_stopped_at_its_budget_still_reports_what_ran(tmp_path, monkeypatch):
    """SIGINT first: pytest stops, writes its junit file (the summary lists what passed), then the
    step is recorded as timed out. Margins for a loaded 2-core machine: pytest has 20 s to start
    and run the quick test, and 10 s after SIGINT to write its junit file (with 12 s and 4 s it
    was once killed first)."""
    monkeypatch.setattr(acceptance_runner, "GRACE_S", 10.0)
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_slow.py").write_text("import time\n"
                                        "def test_quick():\n    assert True\n"
                                        "def test_slow():\n    time.sleep(120)\n")
    step = Step("stand-in-tests", "stand-in pytest", (PY, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider",
                                                      "--rootdir", str(tests), "--junitxml={junit}"), 1, 30, False)
    out = tmp_path / "out"
    assert gpu_acceptance.run([step], out, seed=1) == 1
    (record,) = json.loads((out / "acceptance.json").read_text())["steps"]
    assert record["status"] == "timeout" and record["seconds"] < 30  # SIGINT stopped it, not SIGKILL
    assert record["junit"]["passed"] == 1 and record["junit"]["tests"] == 1  # the interrupted one is not counted
    assert "1 passed" in (out / "summary.md").read_text()


def test_unknown_step_is_refused_before_anything_runs(tmp_path, capsys):
    assert gpu_acceptance.main(["--steps", "environment,bogus", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "bogus" in err and "kernel-tests" in err
    assert not any(tmp_path.iterdir())


def test_optional_steps_are_selectable_but_not_in_the_default_plan():
    names = [s.name for s in gpu_acceptance.select_steps("kernel-tests-more,environment", 1, 1)]
    assert names == ["environment", "kernel-tests-more"]
    assert "kernel-tests-more" not in [s.name for s in gpu_acceptance.default_steps(1, 1)]
    assert not {"bench-statistics", "kernel-tiles"} & {s.name for s in gpu_acceptance.default_steps(1, 1)}
    assert gpu_acceptance.plan_seconds(gpu_acceptance.select_steps(  # the next GPU session's plan (README)
        "environment,install,kernel-tiles,bench-statistics", 1, 1))["budget_s"] <= gpu_acceptance.LIMIT_S
    (statistics,) = gpu_acceptance.select_steps("bench-statistics", 1, 1)
    assert "bench.acceptance_statistics" in statistics.command and statistics.estimate_s <= statistics.budget_s
    (model_tests,) = gpu_acceptance.select_steps("model-tests", 1, 1)
    assert model_tests.env["TRITON_INTERPRET"] == "1"  # their models stay on the CPU


def test_environment_works_on_cpu():
    env = environment()
    assert env["python"] and env["torch"] and env["triton"] and env["transformers"]
    assert env["gpu_count"] == len(env["gpus"]) and env["date"]


def test_runner_records_failure_and_timeout_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(acceptance_runner, "MIN_STEP_S", 1.0)
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir(), out.mkdir()
    steps = [
        stand_in("first", "print('fine')"),
        stand_in("fails", "import sys; print('boom'); sys.exit(3)"),
        stand_in("sleeps", "import time; time.sleep(60)", budget_s=1.5),
        stand_in("ignores-sigint", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)",
                 budget_s=1.5),
        Step("skips", "stand-in", (PY, "-c", "import json, sys; open(sys.argv[1], 'w').write(json.dumps("
                                   "{'status': 'skipped', 'reason': 'needs 2 GPUs'}))", "{result}"), 1, 30, False),
        stand_in("last", "print('still ran')"),
    ]
    records = {r["step"]: r for r in run_plan(steps, scratch, out, limit_s=120, log=lambda _: None)}
    assert records["first"]["status"] == "ok" and "fine" in records["first"]["log_tail"]
    assert records["fails"]["status"] == "failed" and records["fails"]["returncode"] == 3
    assert "boom" in records["fails"]["log_tail"]
    for name in ("sleeps", "ignores-sigint"):
        assert records[name]["status"] == "timeout" and records[name]["seconds"] < 10
    assert records["skips"]["status"] == "skipped" and records["skips"]["reason"] == "needs 2 GPUs"
    assert records["last"]["status"] == "ok" and "still ran" in records["last"]["log_tail"]


def test_steps_past_the_plan_limit_are_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(acceptance_runner, "MIN_STEP_S", 1.0)
    steps = [stand_in("slow", "import time; time.sleep(60)", budget_s=30), stand_in("after", "pass")]
    records = run_plan(steps, tmp_path, tmp_path, limit_s=1.5, log=lambda _: None)
    assert [r["status"] for r in records] == ["timeout", "not-run"]


def test_report_lands_under_out_with_test_results_and_failure_in_exit_status(tmp_path, monkeypatch):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_stand_in.py").write_text(
        "import pytest\n"
        "def test_passes():\n    assert True\n"
        "def test_fails():\n    assert 1 == 2, 'planted failure'\n"
        "def test_skips():\n    pytest.skip('needs 2 GPUs')\n")
    pytest_step = Step("stand-in-tests", "stand-in pytest", (PY, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider",
                                                              "--rootdir", str(tests), "--junitxml={junit}"), 1, 60, False)
    env_step = next(s for s in gpu_acceptance.default_steps(1, 1) if s.name == "environment")
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    rc = gpu_acceptance.run([env_step, pytest_step], gpu_acceptance.output_dir(None), seed=7)
    assert rc == 1  # a test failed
    files = sorted(p.name for p in out.iterdir())
    assert {"summary.md", "acceptance.json", "steps.log"} <= set(files)
    assert len(files) <= 8 and all(DEVICE_NAME.match(f) and (out / f).is_file() for f in files)
    doc = json.loads((out / "acceptance.json").read_text())
    junit = {r["step"]: r for r in doc["steps"]}["stand-in-tests"]["junit"]
    assert (junit["passed"], junit["failed"], junit["skipped"]) == (1, 1, 1)
    assert doc["environment"]["python"] and doc["seed"] == 7 and doc["status"] == "FAILED: stand-in-tests"
    summary = (out / "summary.md").read_text()
    assert "FAILED: stand-in-tests" in summary and "test_fails" in summary and "needs 2 GPUs" in summary


def test_environment_alone_writes_a_passing_report_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_acceptance.main(["--steps", "environment"]) == 0
    assert "all steps passed" in (tmp_path / "summary.md").read_text()


def test_gpu_steps_refuse_to_run_without_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_acceptance, "cuda_available", lambda: False)
    assert gpu_acceptance.main(["--steps", "kernel-tests", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_autotune_choices_are_read_from_real_autotuners():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def kernel(X, N, BLOCK: tl.constexpr):
        pass

    configs = [triton.Config({"BLOCK": 32}, num_warps=4, num_stages=2), triton.Config({"BLOCK": 64}, num_warps=8)]
    tuner = triton.autotune(configs=configs, key=["N"])(kernel)
    tuner.cache[(4096, "torch.bfloat16")] = configs[1]
    (row,) = autotune_report.tuner_choices([tuner])
    assert row["kernel"] == "kernel" and row["key"] == {"N": "4096"} and row["key_extra"] == ["torch.bfloat16"]
    assert row["config"]["BLOCK"] == 64 and row["config"]["num_warps"] == 8 and row["n_configs"] == 2


def test_bench_steps_plumbing_on_cpu(tmp_path):
    """The bench steps' command shape (autotune report around a bench main, results into {out}),
    run with the benches' --quick CPU sizes: the GPU steps differ only in their sizes."""
    steps = [Step("bench-kernel", "quick", gpu_acceptance.bench_command("bench.acceptance_kernel", "--quick"),
                  1, 120, False),
             Step("bench-model", "quick", gpu_acceptance.bench_command(
                  "bench.bench_model", "--quick", "--models", "pythia-1b-shape", "--lengths", "48",
                  "--xu-sequences", "4"), 1, 300, False, gpu_acceptance.MODEL_BENCH_PINS)]
    out = tmp_path / "out"
    rc = gpu_acceptance.run(steps, out, seed=3)
    doc = json.loads((out / "acceptance.json").read_text())
    assert rc == 0, [r.get("log_tail") for r in doc["steps"]]
    for record in doc["steps"]:
        assert record["status"] == "ok" and record["result"]["choices"] == []  # no autotuning on the CPU
    model_step = doc["steps"][1]
    assert model_step["env"] == gpu_acceptance.MODEL_BENCH_PINS
    assert model_step["result"]["pinned"] == {"fused": gpu_acceptance.MODEL_BENCH_PINS["CIRCUIT_STATS_TRITON_CONFIG"]}
    assert set(doc["benchmarks"]) == {"kernel-quick", "model-quick"}
    assert {r["model"] for r in doc["benchmarks"]["model-quick"]["results"]} == {"pythia-1b-shape"}
    kernel_rows = doc["benchmarks"]["kernel-quick"]["results"]
    assert {r["variant"] for r in kernel_rows if r["D"] == 32} == {"ours-plain", "sdpa-flash"}  # the plain-vs-SDPA rows
    assert all(r["status"] == "ok" for r in kernel_rows)
    summary = (out / "summary.md").read_text()
    assert "ours-all" in summary and "xu2026 end to end" in summary
    assert "| bench-model | fused (pinned) | every launch | BLOCK_M=64,BLOCK_N=32,num_warps=8,num_stages=2 |" in summary
    assert len(list(out.iterdir())) <= 8


def test_statistics_step_plumbing_on_cpu(tmp_path):
    """Issue 23's timing step, run with its --quick CPU sizes: its rows and ratio table reach
    acceptance.json and summary.md."""
    step = Step("bench-statistics", "quick", gpu_acceptance.bench_command("bench.acceptance_statistics", "--quick"),
                1, 120, False)
    out = tmp_path / "out"
    assert gpu_acceptance.run([step], out, seed=3) == 0
    doc = json.loads((out / "acceptance.json").read_text())
    ratios = doc["benchmarks"]["statistics-quick"]["ratios"]
    assert {r["variant"] for r in ratios} == {v for _, variants in acceptance_statistics.SWEEPS for v in variants} - {
        "ours-plain"}
    assert "Statistics over plain attention (median time ratios)" in (out / "summary.md").read_text()


def test_hf_families_step_on_cpu(tmp_path):
    """The HF-on-GPU step's script, run on the CPU: rows per family and dtype, a refused family
    skipped with its reason, a broken one recorded as failed while the others still run, and the
    table in the summary."""
    step = next(s for s in gpu_acceptance.default_steps(1, 1) if s.name == "hf-gpu")
    argv = ("--device", "cpu", "--families", "pythia,falcon,no-such-family")
    out = tmp_path / "out"
    assert step.env["CIRCUIT_STATS_TRITON_CONFIG"]  # run with the step's pins, as on the GPU
    assert gpu_acceptance.run([Step(step.name, step.purpose, (*step.command, *argv), 1, 300, False, step.env)], out,
                              seed=1) == 1
    (record,) = json.loads((out / "acceptance.json").read_text())["steps"]
    assert record["status"] == "failed"
    rows = {(r["family"], r.get("dtype")): r for r in record["result"]["families"]}
    assert rows[("pythia", "float32")]["generate_equal"] and rows[("pythia", "float32")]["logit_err"] < 1e-3
    assert rows[("pythia", "bfloat16")]["status"] == "ok" and rows[("pythia", "bfloat16")]["eager_logit_err"] > 0
    assert rows[("falcon", None)]["status"] == "skipped" and "AttentionInterface" in rows[("falcon", None)]["reason"]
    assert rows[("no-such-family", None)]["status"] == "failed"
    assert "### HF families on the GPU" in (out / "summary.md").read_text()


def test_multi_gpu_step_skips_with_its_reason_and_its_check_runs(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        assert acceptance_multi_gpu.main(["--json", str(tmp_path / "r.json")]) == 0
        result = json.loads((tmp_path / "r.json").read_text())
        assert result["status"] == "skipped" and "needs 2 GPUs" in result["reason"]
    # the check itself, on the CPU with the torch backend (the step runs it on cuda:1 with Triton)
    result = acceptance_multi_gpu.check_device("cpu", backend="torch")
    assert acceptance_multi_gpu.within_tolerance(result) and result["device"] == "cpu"

