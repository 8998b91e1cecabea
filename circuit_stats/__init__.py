"""circuit-stats: which attention heads do what, and when in training they started doing it.

Importing the package registers ``attn_implementation="circuit_stats"`` with transformers: at
once when transformers' model code is already loaded, else the moment it loads (an import hook,
so that ``import circuit_stats`` and the ``circuit-stats`` command line start without torch).
The public names below are imported on first use.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"
__all__ = ["AttentionStats", "attention_with_stats", "evaluate", "key_scores", "profile", "record", "score_heads",
           "__version__"]

# public name -> the submodule that defines it
PUBLIC = {"AttentionStats": "kernels", "attention_with_stats": "kernels", "evaluate": "evaluation",
          "key_scores": "kv_export", "record": "models",
          "profile": "profiling", "score_heads": "scoring"}
# transformers' module defining AttentionInterface; once it is loaded, circuit_stats.models registers
TRANSFORMERS_MODEL_CODE = "transformers.modeling_utils"


def __getattr__(name: str):
    """``circuit_stats.record`` etc., and sub-packages (``circuit_stats.models``), on first use."""
    if name in PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(PUBLIC))


class RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Import ``circuit_stats.models`` (which registers the attention implementation) right after
    transformers' model code has been executed. Removes itself after the first hit."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TRANSFORMERS_MODEL_CODE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_then_register(module):
            run(module)
            importlib.import_module(f"{__name__}.models")

        spec.loader.exec_module = exec_then_register
        return spec


def register_attention() -> None:
    """Register now if transformers' model code is loaded, else as soon as it loads."""
    if TRANSFORMERS_MODEL_CODE in sys.modules:
        importlib.import_module(f"{__name__}.models")
    elif not any(isinstance(f, RegisterWhenTransformersLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, RegisterWhenTransformersLoads())


register_attention()
