"""Counting what copies host data to a device or waits for a device (shared by the kernel and model
tests): ``HostTraffic`` and ``count_launches_apart``."""

from __future__ import annotations

import contextlib
import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Where the counted calls are attributed (the innermost frame of the package, not torch or a test).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_FOLDERS = tuple(os.path.join(PACKAGE_ROOT, d) + os.sep for d in ("kernels", "models", "circuit_stats"))


def _caller() -> str:
    """``folder/file.py:line function`` of the innermost package frame on the stack ('?' if none)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(PACKAGE_FOLDERS):
            return f"{os.path.relpath(frame.filename, PACKAGE_ROOT)}:{frame.lineno} {frame.name}"
    return "?"


class HostTraffic:
    """Counts, while ``counting()``, what copies host data to a device or waits for a device on a
    GPU: tensors made from Python data (``torch.tensor``/``as_tensor``), moves to another device
    and reads of tensor values (``item``, ``tolist``, ``cpu``, ``numpy``, ``bool``/``int``/
    ``float``/``index`` of a tensor). Kernel launches run uncounted (``launching``): the
    interpreter reads its arguments on the host, a GPU launch does not.

    ``events``: the names of the counted calls in order; ``where``: for each, the package line
    that made it (``kernels/side_inputs.py:180 raise_failed``; '?' outside the package). ``ops``:
    ``(name, where)`` of every ATen operator run while counting, outside the launches
    (``aten.sort.default``): on a GPU each one that computes is a kernel launch of its own."""

    READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self, monkeypatch):
        self.events: list[str] = []
        self.where: list[str] = []
        self.ops: list[str] = []
        self.active = False
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        for name in ("tensor", "as_tensor"):
            monkeypatch.setattr(torch, name, self._counted(f"torch.{name}", getattr(torch, name)))
        real_to = torch.Tensor.to

        def to(t, *args, **kwargs):
            target = next((a for a in (*args, kwargs.get("device")) if isinstance(a, (torch.device, str))), None)
            if self.active and target is not None and torch.device(target) != t.device:
                self._add(f"to({target})")
            return real_to(t, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, "to", to)

    def _add(self, name: str) -> None:
        self.events.append(name)
        self.where.append(_caller())

    def _counted(self, name, real):
        def counted(*args, **kwargs):
            if self.active:
                self._add(name)
            return real(*args, **kwargs)
        return counted

    def clear(self) -> None:
        self.events.clear()
        self.where.clear()
        self.ops.clear()

    def report(self) -> list[str]:
        """``name @ where`` of every counted call, for assertion messages."""
        return [f"{name} @ {where}" for name, where in zip(self.events, self.where)]

    @contextlib.contextmanager
    def counting(self):
        self.active = True
        try:
            with _OperatorLog(self):
                yield self
        finally:
            self.active = False

    def launching(self, name, kernel, launched: list):
        """A stand-in for the jit ``kernel`` that runs it (``kernel.run`` or ``kernel[grid]``) with
        the counter paused, and appends ``name`` to ``launched``."""
        traffic = self

        class Uncounted:  # what triton.heuristics wraps: the kernel, run with the counter paused
            arg_names = kernel.arg_names
            fn = kernel.fn  # its signature (the constexpr names)

            def run(self, *args, **kwargs):
                launched.append(name)
                active, traffic.active = traffic.active, False
                try:
                    return kernel.run(*args, **kwargs)
                finally:
                    traffic.active = active

            def __getitem__(self, grid):
                return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)
        return Uncounted()


class _OperatorLog(TorchDispatchMode):
    """Appends the name of every ATen operator to ``traffic.ops`` while ``traffic.active``."""

    def __init__(self, traffic: HostTraffic):
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.traffic.active:
            self.traffic.ops.append((str(func), _caller()))
        return func(*args, **(kwargs or {}))


def count_launches_apart(monkeypatch) -> HostTraffic:
    """A ``HostTraffic`` with every Triton kernel of the package replaced by its uncounted stand-in
    (fused, fused decode, split decode, combine, token-match band, key mass); ``.launched`` lists
    the launches by name."""
    from circuit_stats.kernels import triton_attention, triton_decode, triton_key_mass, triton_token_match

    traffic = HostTraffic(monkeypatch)
    traffic.launched = []
    for module, attr, name in ((triton_attention, "_attn_stats_fwd", "fused"),
                               (triton_attention, "FUSED_DECODE_KERNEL", "fused"),
                               (triton_decode, "_decode_split_fwd", "split"),
                               (triton_decode, "_decode_combine", "combine"),
                               (triton_token_match, "_token_match_band", "band"),
                               (triton_key_mass, "_key_mass_fwd", "key_mass")):
        monkeypatch.setattr(module, attr, traffic.launching(name, getattr(module, attr), traffic.launched))
    return traffic
