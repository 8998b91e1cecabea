"""Test setup. TRITON_INTERPRET must be set before any Triton kernel module is imported, so
that the Triton kernels run on the CPU when no GPU is present."""

import os
import random
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def poison_outputs(monkeypatch):
    """Make every freshly allocated tensor NaN / garbage, so that an output element the code
    forgets to write cannot pass for a correct one."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        elif t.dtype != torch.bool:
            t.fill_(-12345)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))
    yield


# Fresh random inputs every run; set CIRCUIT_STATS_SEED to replay a failing run.
BASE_SEED = int(os.environ.get("CIRCUIT_STATS_SEED", random.randrange(2**31)))
# pytest-xdist workers start after this module is imported in the controller and inherit its
# environment: they draw no seed of their own, so the printed seed replays every worker's tests.
os.environ["CIRCUIT_STATS_SEED"] = str(BASE_SEED)


def pytest_report_header(config):
    return f"circuit-stats: CIRCUIT_STATS_SEED={BASE_SEED} (set it to replay this run)"


def pytest_terminal_summary(terminalreporter):
    # Also at the end: -q hides the header, and a failing run must be replayable from the log.
    terminalreporter.write_line(f"random inputs: CIRCUIT_STATS_SEED={BASE_SEED} (set it to replay this run)")


# CI's second Triton (the oldest supported) reruns only what runs Triton: with
# CIRCUIT_STATS_TESTS_TRITON_ONLY=1, tests marked torch_only and cases parametrized backend="torch" are
# deselected (they ran under the newest Triton already and do not depend on its version).
TRITON_ONLY = os.environ.get("CIRCUIT_STATS_TESTS_TRITON_ONLY") == "1"


def runs_no_triton(item) -> bool:
    params = getattr(item, "callspec", None)
    return item.get_closest_marker("torch_only") is not None or (
        params is not None and params.params.get("backend") == "torch")


def pytest_collection_modifyitems(config, items):
    if not TRITON_ONLY:
        return
    dropped = [item for item in items if runs_no_triton(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not runs_no_triton(item)]


@pytest.fixture
def seed(request):
    """Per-test seed: the run's base seed mixed with the test id."""
    s = (BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % (2**31)
    torch.manual_seed(s)
    return s
