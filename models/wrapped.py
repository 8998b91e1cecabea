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
            default keeps a meta-device model until the first trace, then swaps in another), or
            it is a TransformerLens bridge (see :func:`refuse_transformerlens_bridge`).
    """
    refuse_transformerlens_bridge(model)
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


def refuse_transformerlens_bridge(model) -> None:
    """TransformerLens 4's ``TransformerBridge`` (an ``nn.Module`` holding the transformers model as
    ``original_model``) switches that model to eager attention so that its ``hook_pattern`` fires,
    and runs attention through its own components: the fused kernel would never see a call, so it
    is refused with the call to use instead (TransformerLens 4.3 ``force_eager_attention``)."""
    inner = getattr(model, "original_model", None)
    if not (isinstance(inner, torch.nn.Module) and hasattr(inner, "config") and hasattr(model, "cfg")):
        return
    name = getattr(inner.config, "_name_or_path", "") or "<the model's name or path>"
    raise ValueError(f"this is a TransformerLens {type(model).__name__}: it runs the model's attention eagerly through "
                     "its own hooks, so circuit_stats never sees it. Load the transformers model itself: "
                     f"model = AutoModelForCausalLM.from_pretrained({name!r}, attn_implementation='circuit_stats'), "
                     "then circuit_stats.record(model, ...) / score_heads(model, ...) / profile(model, ...)")
