"""The autotuner's choices after a run: run a module's ``main`` in this process, then write what
every Triton autotuner in memory picked for each key.

    python -m bench.autotune_report --json choices.json bench.bench_kernel --lengths 2048

Autotuners are found in the kernel modules (``circuit_stats.kernels.*``, the attributes of each
module and the dicts, lists and tuples it holds) by type (``triton.runtime.autotuner.Autotuner``),
not by name, so nothing here depends on how the modules name or group them. Not by scanning
``gc.get_objects()``: ``isinstance`` on a weak proxy whose object is gone raises ReferenceError
(it did on the H200). Pinned configs (``kernels.pinning``: launches that bypass the autotuners)
are written beside the choices.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence


def config_dict(config: Any) -> dict:
    """A ``triton.Config`` as plain values: its kwargs, warps, stages (and CTAs where set)."""
    out = dict(getattr(config, "kwargs", {}))
    for name in ("num_warps", "num_stages", "num_ctas"):
        if getattr(config, name, None) is not None:
            out[name] = getattr(config, name)
    return out


KERNEL_PACKAGE = "circuit_stats.kernels"


def autotuners(package: str = KERNEL_PACKAGE) -> list:
    """Every autotuner held by an imported module of ``package`` (or in a dict, list or tuple
    such a module holds), once each, in import order."""
    from triton.runtime.autotuner import Autotuner

    found: dict[int, Any] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for value in list(vars(module).values()):
            # type(), never isinstance(): isinstance looks through a weak proxy, and raises if it is dead
            kind = type(value)
            members = value.values() if issubclass(kind, dict) else value if issubclass(kind, (list, tuple)) else [value]
            found.update((id(obj), obj) for obj in list(members) if issubclass(type(obj), Autotuner))
    return list(found.values())


def kernel_name(tuner: Any) -> str:
    fn = getattr(tuner, "base_fn", None) or getattr(tuner, "fn", None)
    while fn is not None and not hasattr(fn, "__name__") and hasattr(fn, "fn"):
        fn = fn.fn
    return getattr(fn, "__name__", type(tuner).__name__)


def tuner_choices(tuners: Optional[list] = None) -> list[dict]:
    """One row per (autotuner, key) it has tuned: kernel, key names and values, the chosen
    config, how many configs it could choose from."""
    rows = []
    for tuner in autotuners() if tuners is None else tuners:
        names = list(getattr(tuner, "keys", []) or [])
        for key, config in dict(getattr(tuner, "cache", {}) or {}).items():
            values = list(key) if isinstance(key, tuple) else [key]
            rows.append({"kernel": kernel_name(tuner), "key": dict(zip(names, map(str, values))),
                         "key_extra": [str(v) for v in values[len(names):]], "config": config_dict(config),
                         "n_configs": len(getattr(tuner, "configs", []) or [])})
    return rows


def pinned_configs() -> dict:
    """``{kernel: "BLOCK_M=64,..."}`` for every pinned kernel, or ``{"error": why}`` if a pin is bad."""
    from circuit_stats.kernels import pinning

    try:
        pins = {kernel: pinning.pinned(kernel) for kernel in pinning.PIN_KEYS}
    except ValueError as err:
        return {"error": str(err)}
    return {kernel: pinning.config_text(pin.config) for kernel, pin in pins.items() if pin is not None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, required=True, help="where to write the choices")
    p.add_argument("module", help="module whose main(argv) to run, e.g. bench.bench_kernel")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    a = p.parse_args(argv)
    rc = 1
    try:
        rc = importlib.import_module(a.module).main(a.args)
    finally:
        choices = tuner_choices()
        a.json.write_text(json.dumps({"module": a.module, "returncode": rc, "choices": choices,
                                      "pinned": pinned_configs()}, indent=1))
        print(f"autotune choices: {len(choices)} (kernel, key) pairs -> {a.json}")
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
