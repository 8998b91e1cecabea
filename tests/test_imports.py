"""Every module of the package imports on its own, as the first module of the package a user
imports (an import circle shows only then: a module that imports its importer half-built)."""

import importlib
import pkgutil
import sys

import pytest

import circuit_stats


def package_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(circuit_stats.__path__, "circuit_stats."))


def forget_package() -> None:
    for name in [n for n in sys.modules if n == "circuit_stats" or n.startswith("circuit_stats.")]:
        del sys.modules[name]


@pytest.mark.parametrize("module", package_modules())
def test_module_imports_first(module, monkeypatch):
    saved = {n: m for n, m in sys.modules.items() if n == "circuit_stats" or n.startswith("circuit_stats.")}
    forget_package()
    try:
        importlib.import_module(module)
    finally:
        forget_package()
        sys.modules.update(saved)
