"""Every module of the package imports on its own, as the first module of the package a user
imports (an import circle shows only then: a module that imports its importer half-built).

Runs in a child process: importing the package again re-registers its attention function with
transformers, which the test process must not see."""

import subprocess
import sys

CHECK = r"""
import importlib, pkgutil, sys, traceback
import circuit_stats
names = sorted(m.name for m in pkgutil.walk_packages(circuit_stats.__path__, "circuit_stats."))
failed = []
for name in names:
    for loaded in [n for n in sys.modules if n == "circuit_stats" or n.startswith("circuit_stats.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\n" + traceback.format_exc(limit=-3))
print(len(names), "modules")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first():
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert int(run.stdout.split()[0]) > 50  # the walk found the package's modules
