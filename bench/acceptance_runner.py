"""Run a plan of steps as subprocesses, each under its own time budget, and record every outcome.

A step that fails or runs out of time is recorded and the plan goes on; nothing a step does can
stop the steps after it. On a timeout the step's process group gets SIGINT first (pytest then
still writes its junit file and summary) and SIGKILL ``GRACE_S`` seconds later.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

GRACE_S = 10.0
MIN_STEP_S = 5.0  # a step with less time left than this is not started
REPO = Path(__file__).resolve().parent.parent  # steps run here: `python -m bench.X`, tests/... paths
LOG_TAIL_CHARS = 6000
# Step statuses: ok, failed, timeout, skipped (the step said why), not-run (no time left).
FAILING = ("failed", "timeout", "not-run")


@dataclass(frozen=True)
class Step:
    """One command of the plan. ``estimate_s``: expected seconds on a warm H100/H200;
    ``budget_s``: the hard limit. The command may write ``{result}`` (a JSON object: ``status``
    "skipped" with a ``reason``, and any data), ``{junit}`` (pytest's junit XML) and other files
    into ``{scratch}``; ``{out}`` is the output directory."""

    name: str
    purpose: str
    command: tuple[str, ...]
    estimate_s: float
    budget_s: float
    needs_gpu: bool = True
    env: dict = field(default_factory=dict)


def format_command(step: Step, scratch: Path, out: Path) -> list[str]:
    """The step's command with ``{scratch}``, ``{out}`` and ``{result}`` filled in."""
    values = {"scratch": str(scratch), "out": str(out), "result": str(result_path(step, scratch)),
              "junit": str(junit_path(step, scratch))}
    return [fill(part, values) for part in step.command]


def fill(part: str, values: dict) -> str:
    """Replace each ``{name}`` of ``values`` in ``part`` (plain replacement: other braces stay)."""
    for name, value in values.items():
        part = part.replace("{" + name + "}", value)
    return part


def result_path(step: Step, scratch: Path) -> Path:
    return scratch / f"{step.name}.result.json"


def junit_path(step: Step, scratch: Path) -> Path:
    return scratch / f"{step.name}.junit.xml"


def run_step(step: Step, scratch: Path, out: Path, log_path: Path, budget_s: Optional[float] = None) -> dict:
    """Run ``step`` and return its record: status, seconds, return code, log tail, its result."""
    budget = step.budget_s if budget_s is None else budget_s
    record = {"step": step.name, "purpose": step.purpose, "estimate_s": step.estimate_s, "budget_s": budget}
    if budget < MIN_STEP_S:
        return {**record, "status": "not-run", "reason": "no time left in the plan", "seconds": 0.0}
    cmd = format_command(step, scratch, out)
    start = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"\n===== {step.name}: {' '.join(cmd)}\n")
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **step.env},
                                cwd=REPO, start_new_session=True)
        timed_out = wait_or_stop(proc, budget)
    seconds = time.monotonic() - start
    record.update(command=cmd, env=step.env, seconds=round(seconds, 1), returncode=proc.returncode,
                  log_tail=read_tail(log_path, offset))
    result = read_result(result_path(step, scratch))
    if result is not None:
        record["result"] = result
    if timed_out:
        record.update(status="timeout", reason=f"ran past its budget of {budget:.0f} s")
    elif proc.returncode != 0:
        record.update(status="failed", reason=f"exit status {proc.returncode}")
    elif result is not None and result.get("status") == "skipped":
        record.update(status="skipped", reason=result.get("reason", "no reason given"))
    else:
        record["status"] = "ok"
    return record


def wait_or_stop(proc: subprocess.Popen, budget_s: float) -> bool:
    """Wait for ``proc``; interrupt its process group a grace period before ``budget_s`` and kill
    it at ``budget_s``. True if it had to be stopped."""
    grace = min(GRACE_S, budget_s / 4)
    try:
        proc.wait(timeout=budget_s - grace)
        return False
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc, signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait()
    return True


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def read_tail(path: Path, offset: int) -> str:
    with open(path, errors="replace") as f:
        f.seek(offset)
        text = f.read()
    return text[-LOG_TAIL_CHARS:]


def read_result(path: Path) -> Optional[dict]:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        return {"unreadable": f"{path.name}: {err}"}
    return value if isinstance(value, dict) else {"value": value}


def run_plan(steps: list[Step], scratch: Path, out: Path, limit_s: float, log=print) -> list[dict]:
    """Run ``steps`` in order; each gets its budget or what is left of ``limit_s``, whichever is
    less. Returns one record per step."""
    deadline = time.monotonic() + limit_s
    log_path = out / "steps.log"
    records = []
    for step in steps:
        left = deadline - time.monotonic()
        log(f"[{step.name}] {step.purpose} (estimate {step.estimate_s:.0f} s, budget {min(step.budget_s, left):.0f} s)")
        record = run_step(step, scratch, out, log_path, budget_s=min(step.budget_s, max(left, 0.0)))
        log(f"[{step.name}] {record['status']} in {record.get('seconds', 0):.0f} s"
            + (f": {record['reason']}" if record.get("reason") else ""))
        records.append(record)
    return records
