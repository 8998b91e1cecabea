"""Models held inside a wrapper object.

nnsight's ``LanguageModel`` (and its successor ``TransformersModel``) keeps the transformers
model it wraps as ``._module``. ``record()``, ``score_heads()`` and ``profile()`` accept such a
wrapper and work on that module; the wrapper is recognised by duck typing (an object that is not
a ``torch.nn.Module`` but holds one with a ``config`` as ``_module``), so nnsight is never
imported. Interventions run inside the wrapper's ``trace``/``generate`` contexts reach the same
module, so ``record()`` sees them.
"""

from __future__ import annotations

import torch


def unwrap_model(model):
    """The transformers model inside an nnsight-style wrapper, or ``model`` itself.

    Raises:
        ValueError: the wrapper has not loaded its weights yet (nnsight's ``dispatch=False``
            default keeps a meta-device model until the first trace, then swaps in another).
    """
    if isinstance(model, torch.nn.Module):
        return model
    inner = getattr(model, "_module", None)
    if not (isinstance(inner, torch.nn.Module) and hasattr(inner, "config")):
        return model
    if getattr(model, "dispatched", True) is False:
        raise ValueError(f"this {type(model).__name__} has not loaded its weights yet: create it with "
                         "dispatch=True (e.g. LanguageModel(path, dispatch=True, attn_implementation='circuit_stats')) "
                         "or call .dispatch() first")
    return inner
