"""The environment record of a GPU acceptance run, and the check that the project imports.

    python -m bench.acceptance_env --json env.json      # what ran where (no GPU needed)
    python -m bench.acceptance_env --ensure-installed   # editable install, offline, if needed

Light on purpose: package versions come from their metadata and the GPU from ``nvidia-smi``, so
that recording the environment works on a CPU and cannot itself crash on a broken CUDA stack.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

PACKAGES = ("torch", "triton", "transformers", "accelerate", "pytest", "pytest-xdist")
NVIDIA_SMI_FIELDS = ("name", "driver_version", "memory.total", "compute_cap")
REPO = Path(__file__).resolve().parent.parent


def package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi_gpus() -> list[dict]:
    """One dict per GPU (``NVIDIA_SMI_FIELDS``); empty where ``nvidia-smi`` is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    query = ["--query-gpu=" + ",".join(NVIDIA_SMI_FIELDS), "--format=csv,noheader"]
    try:
        text = subprocess.run([exe, *query], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(NVIDIA_SMI_FIELDS, (f.strip() for f in line.split(",")))) for line in text.splitlines() if line]


def cuda_runtime() -> Optional[str]:
    """The CUDA version torch was built with, read without importing torch (None on CPU wheels)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    for line in version_file.read_text().splitlines() if version_file.exists() else []:
        if line.startswith("cuda"):
            value = line.split("=", 1)[1].strip().strip("'\"")
            return None if value in ("None", "") else value
    return None


def environment() -> dict:
    """GPU(s), driver, CUDA, python and package versions, date, git commit."""
    gpus = nvidia_smi_gpus()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gpus": gpus,
        "gpu": gpus[0]["name"] if gpus else None,
        "gpu_count": len(gpus),
        "driver": gpus[0]["driver_version"] if gpus else None,
        "cuda": cuda_runtime(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        **{name: package_version(name) for name in PACKAGES},
        "commit": git_commit(),
    }


def git_commit() -> Optional[str]:
    """``CIRCUIT_STATS_COMMIT`` when set (a copied checkout's git may not be the project's), else git's HEAD."""
    if os.environ.get("CIRCUIT_STATS_COMMIT"):
        return os.environ["CIRCUIT_STATS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def project_importable() -> bool:
    """Whether ``circuit_stats.kernels`` resolves (it lives in ``kernels/``, mapped by setup.py)."""
    try:
        return importlib.util.find_spec("circuit_stats.kernels") is not None
    except ImportError:
        return False


def ensure_installed() -> int:
    """Install the checkout in editable mode without network or dependencies when the package
    does not import yet (a bare GPU machine that already has torch, triton, transformers)."""
    if project_importable():
        print("circuit_stats.kernels imports: nothing to install")
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(REPO)]
    print("installing:", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False).returncode


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the environment record here")
    p.add_argument("--ensure-installed", action="store_true", help="editable install when the package is missing")
    a = p.parse_args(argv)
    if a.ensure_installed:
        return ensure_installed()
    env = environment()
    print(json.dumps(env, indent=1))
    if a.json:
        a.json.write_text(json.dumps(env, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
