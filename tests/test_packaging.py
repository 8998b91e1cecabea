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
