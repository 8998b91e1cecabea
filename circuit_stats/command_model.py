"""The model a command runs on (``profile``, ``eval``): loaded with ``attn_implementation=
"circuit_stats"`` on ``--device`` in ``--dtype``."""

from __future__ import annotations


def load_command_model(a):
    """``a.model`` at ``a.revision`` on ``a.device`` in ``a.dtype`` (parsed command-line settings);
    a ValueError (exit 2) naming the model when it does not load."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # default: the checkpoint's dtype, but float32 on the CPU (half-precision CPU matmuls are slow)
    dtype = getattr(torch, a.dtype) if a.dtype else ("auto" if device.type != "cpu" else torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(a.model, revision=a.revision, dtype=dtype,
                                                     attn_implementation="circuit_stats")
    except OSError as err:
        raise ValueError(f"model {a.model}: cannot be loaded ({err})") from None
    return model.to(device)
