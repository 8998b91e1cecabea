"""The dependency range in setup.py and the versions CI tests must agree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_tests_the_oldest_supported_transformers():
    setup = (ROOT / "setup.py").read_text()
    low, high = re.search(r'"transformers>=([\d.]+),<([\d.]+)"', setup).groups()
    ci = (ROOT / ".ci" / "run").read_text()
    oldest = re.search(r"^OLDEST_TRANSFORMERS=([\d.]+)$", ci, re.M).group(1)
    assert tuple(map(int, oldest.split("."))) [:len(low.split("."))] == tuple(map(int, low.split("."))), (oldest, low)
    assert "-m hf" in ci


def test_ci_second_environment_shares_the_environment_ci_runs_in(tmp_path):
    """.ci/run's oldest-transformers venv sees the packages of the interpreter that runs CI (a venv
    or the system Python), editable install included; --system-site-packages saw the base's."""
    import subprocess
    import sys
    import venv

    ci = (ROOT / ".ci" / "run").read_text()
    share = re.search(r"^python3 - .*?<<'PY'\n(.*?)^PY$", ci, re.S | re.M).group(1)
    venv.create(tmp_path / "oldest", with_pip=False)
    python = str(tmp_path / "oldest" / "bin" / "python")

    def run(*argv, stdin=None):
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout.strip()

    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    run(sys.executable, "-", purelib, stdin=share)
    here = run(sys.executable, "-c", "import torch, circuit_stats; print(torch.__file__, circuit_stats.__file__)")
    assert run(python, "-c", "import torch, circuit_stats; print(torch.__file__, circuit_stats.__file__)") == here


def test_ci_tests_the_oldest_supported_triton():
    setup = (ROOT / "setup.py").read_text()
    low = re.search(r'"triton>=([\d.]+),<([\d.]+)"', setup).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    oldest = re.search(r"^OLDEST_TRITON=([\d.]+)$", ci, re.M).group(1)
    assert oldest.split(".")[: len(low.split("."))] == low.split("."), (oldest, low)
    assert 'pytest tests/kernels -q -n 2 -m "not hf"' in ci
