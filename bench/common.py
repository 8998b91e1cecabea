"""Shared pieces of the benchmarks: timing, environment record, result files."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu-{platform.machine()}"


def environment(device: str) -> dict:
    import transformers
    import triton

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
    }


def timing_arguments(description: str) -> argparse.ArgumentParser:
    """A GPU benchmark's parser with ``--quick`` (tiny CPU-sized sizes), ``--device`` and ``--out-dir``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny CPU-sized sizes (harness check)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out-dir", default=None)
    return p


def refuses_cpu(args: argparse.Namespace, what: str) -> bool:
    """True (after saying so on stderr) when ``what`` would run its GPU sizes without a CUDA device."""
    if args.quick or args.device.startswith("cuda"):
        return False
    print(f"{what} needs a CUDA GPU; use --quick for a CPU harness check", file=sys.stderr)
    return True


def median_ms(fn: Callable[[], object], device: str, warmup: int = 5, rep: int = 20) -> float:
    """Median time of ``fn`` in ms: ``triton.testing.do_bench`` on CUDA, wall clock on CPU."""
    if device.startswith("cuda"):
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup * 5, rep=rep * 5, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_memory(fn: Callable[[], object], device: str) -> Optional[int]:
    """Peak bytes allocated while ``fn`` runs (CUDA only; None on CPU)."""
    if not device.startswith("cuda"):
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def write_results(name: str, env: dict, rows: list[dict], columns: list[str], out_dir: Optional[Path] = None,
                  extra: Optional[dict] = None) -> tuple[Path, Path]:
    """``<name>-<device>-<date>.json`` and a Markdown table next to it."""
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in env["device"]).strip("-").lower()
    stem = f"{name}-{slug}-{env['date']}"
    payload = {"benchmark": name, "environment": env, **(extra or {}), "results": rows}
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(payload, indent=1))
    mpath.write_text(markdown_table(rows, columns, f"{name} on {env['device']} ({env['date']}, torch {env['torch']}, "
                                                   f"triton {env['triton']})"))
    return jpath, mpath


def markdown_table(rows: list[dict], columns: list[str], title: str) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
