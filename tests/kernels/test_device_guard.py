"""Every Triton launch (fused, split decode, combine) runs inside a guard for the tensors' device:
Triton launches on the current CUDA device, so a layer on cuda:1 must make cuda:1 current."""

import contextlib
import contextvars

import pytest
import torch
import triton
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels import SideInputs, triton_attention, triton_decode
from circuit_stats.kernels.triton_common import run_with_scratch


class GuardRecorder:
    """Stands in for ``device_guard``: records the device each launch site enters, and which
    kernels were launched while inside it."""

    def __init__(self):
        self.current = None
        self.launches = []  # (kernel name, device current at launch)

    @contextlib.contextmanager
    def guard(self, device):
        previous, self.current = self.current, device
        try:
            yield
        finally:
            self.current = previous

    def kernel(self, name, real):
        recorder = self

        class Kernel:  # what triton.heuristics wraps: record the launch, compute nothing (shape-only)
            arg_names = real.arg_names

            def run(self, *args, grid, warmup, **kwargs):
                recorder.launches.append((name, recorder.current))
        return Kernel()


@pytest.fixture
def recorder(monkeypatch):
    rec = GuardRecorder()
    for module in (triton_attention, triton_decode):
        monkeypatch.setattr(module, "device_guard", rec.guard)
    for module, attr, name in ((triton_attention, "_attn_stats_fwd", "fused"),
                               (triton_attention, "FUSED_DECODE_KERNEL", "fused"),
                               (triton_decode, "_decode_split_fwd", "split"), (triton_decode, "_decode_combine", "combine")):
        monkeypatch.setattr(module, attr, rec.kernel(name, getattr(module, attr)))
    return rec


def inputs(n_q: int, n_k: int):
    q = torch.randn(1, 2, n_q, 16)
    k, v = torch.randn(1, 1, n_k, 16), torch.randn(1, 1, n_k, 16)
    return q, k, v, SideInputs.build(batch=1, k_len=n_k, device=q.device)


def test_fused_launch_enters_the_tensors_device(recorder):
    q, k, v, side = inputs(20, 20)
    triton_attention.attention_with_stats_triton(q, k, v, StatsRequest(scale=0.25), side)
    assert recorder.launches == [("fused", q.device)]


def test_split_decode_and_combine_launches_enter_the_tensors_device(recorder):
    q, k, v, side = inputs(1, 64)
    triton_decode.attention_with_stats_decode(q, k, v, StatsRequest(scale=0.25), side, split_len=32)
    assert recorder.launches == [("split", q.device), ("combine", q.device)]


def test_device_guard_makes_a_cuda_device_current(monkeypatch):
    """The real guard enters torch.cuda.device for CUDA tensors (a recording stand-in for it
    here) and nothing for CPU tensors."""
    from circuit_stats.kernels import triton_common

    entered = []

    @contextlib.contextmanager
    def fake_cuda_device(device):
        entered.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_cuda_device)
    with triton_common.device_guard(torch.device("cuda", 1)):
        pass
    with triton_common.device_guard(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 1)]


def test_interpreter_check_names_the_numpy_fix(monkeypatch):
    """Triton 3.6's interpreter with NumPy >= 2.4 fails at the first loop with a NumPy TypeError:
    the guard says what to install instead (simulated: an interpreter that does not squeeze)."""
    import numpy as np
    from circuit_stats.kernels import triton_common
    from triton.runtime import interpreter

    def int_of_one_element_array_refused(*args, **kwargs):
        raise TypeError("only 0-dimensional arrays can be converted to Python scalars")

    class NumpyWithoutScalarConversion:  # NumPy >= 2.4: int() of a 1-element array raises
        __version__ = "2.4.0"
        ones = staticmethod(lambda n: type("A", (), {"__int__": int_of_one_element_array_refused})())

    def patch_without_squeeze(tensor, scope):
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    monkeypatch.setattr(triton_common, "np", NumpyWithoutScalarConversion)
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", patch_without_squeeze)
    triton_common.check_interpreter.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"numpy<2\.4"):
            triton_common.device_guard(torch.device("cpu"))
    finally:
        triton_common.check_interpreter.cache_clear()
    assert np.ones(1).shape == (1,)


def test_launches_get_a_scratch_allocator_and_the_callers_is_kept():
    """The fused kernel builds its K/V tensor descriptors (TMA_KV) on the device, which takes
    global scratch: a launch runs with an allocator of torch memory on its device, and the
    caller's own Triton allocator is the current one again afterwards."""
    from triton.runtime import _allocation  # where Triton keeps the current allocator

    def callers(size, alignment, stream):
        raise AssertionError("the launch used the caller's allocator")

    def check():
        triton.set_allocator(callers)
        scratch = run_with_scratch(lambda: _allocation._allocator.get()(96, 128, None), torch.device("cpu"))
        assert isinstance(scratch, torch.Tensor) and scratch.numel() == 96 and scratch.device.type == "cpu"
        assert _allocation._allocator.get() is callers

    contextvars.copy_context().run(check)  # the test's own allocator stays out of the other tests
