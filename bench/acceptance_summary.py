"""The report of a GPU acceptance run: pytest junit files read back, ``summary.md`` (Markdown
ready for the README) and ``acceptance.json`` (everything)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Optional

from bench.acceptance_runner import FAILING

MAX_LISTED = 25


def junit_summary(path: Path) -> Optional[dict]:
    """Counts, failing test ids with their first message line, and skip reasons of a junit file
    (tests interrupted at a budget stop are not counted)."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return {"unreadable": str(err)}
    # A test that SIGINT interrupted is written as a nameless <testcase/>: neither passed nor failed.
    cases = [case for case in root.iter("testcase") if case.get("name")]
    failed, skipped = [], Counter()
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failed.append({"test": name, "kind": tag, "message": (node.get("message") or "").splitlines()[0][:300]
                               if node.get("message") else ""})
        node = case.find("skipped")
        if node is not None:
            skipped[(node.get("message") or "")[:200]] += 1
    n_failed = sum(f["kind"] == "failure" for f in failed)
    n_errors = len(failed) - n_failed
    return {"tests": len(cases), "passed": len(cases) - len(failed) - sum(skipped.values()), "failed": n_failed,
            "errors": n_errors, "skipped": sum(skipped.values()), "failures": failed,
            "skip_reasons": [{"reason": r, "count": c} for r, c in skipped.most_common()]}


def bench_files(out: Path) -> dict:
    """The benchmark result files (``<name>-<device>-<date>.json`` from bench.common) under ``out``."""
    found = {}
    for path in sorted(out.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and "benchmark" in doc:
            found[doc["benchmark"]] = {"file": path.name, **doc}
    return found


def status_line(records: list[dict]) -> str:
    bad = [r["step"] for r in records if r["status"] in FAILING]
    return "all steps passed" if not bad else "FAILED: " + ", ".join(bad)


def markdown(env: dict, records: list[dict], benches: dict, seed: int, out: Path) -> str:
    """``summary.md``: environment, steps, tests, benchmark tables, autotuner choices."""
    lines = [f"## First GPU run: {env.get('gpu') or 'no GPU'} ({env.get('date', '')[:10]})", "",
             f"**{status_line(records)}.** GPU {env.get('gpu')} x{env.get('gpu_count')}, driver {env.get('driver')}, "
             f"CUDA {env.get('cuda')}, torch {env.get('torch')}, triton {env.get('triton')}, transformers "
             f"{env.get('transformers')}, Python {env.get('python')}, commit {str(env.get('commit'))[:10]}, "
             f"CIRCUIT_STATS_SEED={seed}.", "",
             "| step | status | seconds | estimate | budget | note |", "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['step']} | {r['status']} | {r.get('seconds', 0):.0f} | {r['estimate_s']:.0f} | "
                     f"{r['budget_s']:.0f} | {_cell(r.get('reason') or r.get('purpose', ''))} |")
    lines += test_sections(records) + family_section(records) + bench_sections(benches, out) + autotune_section(records)
    return "\n".join(lines) + "\n"


def test_sections(records: list[dict]) -> list[str]:
    lines = []
    for r in records:
        junit = r.get("junit")
        if not junit or "tests" not in junit:
            continue
        lines += ["", f"### Tests: {r['step']}", "",
                  f"{junit['passed']} passed, {junit['failed']} failed, {junit['errors']} errors, "
                  f"{junit['skipped']} skipped ({junit['tests']} run" + (", stopped at the budget)" if r["status"] == "timeout" else ")")]
        lines += [f"- FAIL `{f['test']}`: {_cell(f['message'])}" for f in junit["failures"][:MAX_LISTED]]
        lines += [f"- skipped x{s['count']}: {_cell(s['reason'])}" for s in junit["skip_reasons"][:MAX_LISTED]]
    return lines


FAMILY_COLUMNS = ("family", "dtype", "status", "logit_err", "record_logit_err", "eager_logit_err", "generate_equal")


def family_section(records: list[dict]) -> list[str]:
    """The HF-on-GPU rows (bench.acceptance_models) as a table."""
    rows = [row for r in records for row in (r.get("result") or {}).get("families", [])]
    if not rows:
        return []
    lines = ["", "### HF families on the GPU", "", "| " + " | ".join(FAMILY_COLUMNS) + " | note |",
             "|" + "---|" * (len(FAMILY_COLUMNS) + 1)]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in FAMILY_COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | {_cell(row.get('error') or row.get('reason') or '')} |")
    return lines


def bench_sections(benches: dict, out: Path) -> list[str]:
    lines = []
    for name, doc in benches.items():
        table = out / doc["file"].replace(".json", ".md")
        lines += ["", table.read_text().strip() if table.exists() else f"### {name}: {doc['file']}"]
        if "xu2026_end_to_end" in doc:
            lines += ["", f"xu2026 end to end: `{json.dumps(doc['xu2026_end_to_end'])}`"]
    return lines


def autotune_section(records: list[dict]) -> list[str]:
    """The autotuners' choices per step, and the configs a step pinned (every launch of that kernel)."""
    rows = [(r["step"], c) for r in records for c in (r.get("result") or {}).get("choices", [])]
    pins = [(r["step"], kernel, cfg) for r in records for kernel, cfg in ((r.get("result") or {}).get("pinned") or {}).items()]
    if not rows and not pins:
        return []
    lines = ["", "### Autotuner choices", "", "| step | kernel | key | config | of |", "|---|---|---|---|---|"]
    for step, c in rows:
        key = ", ".join(f"{k}={v}" for k, v in c["key"].items() if v not in ("False", "0", "None"))
        cfg = ", ".join(f"{k}={v}" for k, v in c["config"].items())
        lines.append(f"| {step} | {c['kernel']} | {_cell(key)} | {cfg} | {c['n_configs']} |")
    lines += [f"| {step} | {kernel} (pinned) | every launch | {_cell(cfg)} | - |" for step, kernel, cfg in pins]
    return lines


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:300]


def write_report(out: Path, env: dict, records: list[dict], seed: int, plan: dict) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``acceptance.json`` under ``out``."""
    benches = bench_files(out)
    summary = out / "summary.md"
    summary.write_text(markdown(env, records, benches, seed, out))
    doc = {"status": status_line(records), "environment": env, "seed": seed, "plan": plan, "steps": records,
           "benchmarks": benches}
    path = out / "acceptance.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    return summary, path
