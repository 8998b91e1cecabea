"""A model's context limit, in one place: refuse sequences past learned absolute positions (they
would index past the position table, ``IndexError`` after other forwards ran), warn past a
rotary model's trained context (it runs, on positions it never saw)."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional

import torch

from .config import text_config

# config fields that hold the number of positions a model was trained on, in order of preference
LIMIT_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
# names of learned absolute position tables (GPT-2 and GPT-Neo ``wpe``, OPT/BioGPT ``embed_positions``,
# BERT-style ``position_embeddings``)
POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


def context_limit(model: torch.nn.Module) -> Optional[int]:
    """The number of positions ``model`` was trained on (``max_position_embeddings`` or its
    family's name for it), None if its config states none."""
    config = text_config(model.config)
    for name in LIMIT_FIELDS:
        n = getattr(config, name, None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def has_learned_positions(model: torch.nn.Module) -> bool:
    """Whether ``model`` adds a learned absolute position embedding (a hard limit)."""
    tokens = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return any(isinstance(m, torch.nn.Embedding) and m is not tokens and name.rsplit(".", 1)[-1] in POSITION_TABLES
               for name, m in model.named_modules())


def check_context(model: torch.nn.Module, n_tokens: int, what: str) -> None:
    """Refuse ``n_tokens`` positions past a learned position table; warn past a rotary (or other)
    model's trained context. ``what`` names the setting that asked for the length."""
    limit = context_limit(model)
    if limit is None or n_tokens <= limit:
        return
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    if has_learned_positions(model):
        raise ValueError(f"{what} needs {n_tokens} positions, but {name} has learned position embeddings for "
                         f"{limit} only (its context limit, max_position_embeddings): use at most {limit} tokens")
    warnings.warn(f"{what} needs {n_tokens} positions, past the {limit} that {name} was trained on "
                  "(max_position_embeddings); statistics there describe positions it never saw", stacklevel=3)


def forward_length(args: tuple, kwargs: dict) -> Optional[int]:
    """Positions one forward reaches: cached keys plus new tokens (None if it cannot tell)."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if not isinstance(ids, torch.Tensor) or ids.dim() < 2:
        return None
    cache = kwargs.get("past_key_values")
    cached = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
    return int(cached) + int(ids.shape[1])


@contextlib.contextmanager
def context_guard(model: torch.nn.Module, what: str) -> Iterator[None]:
    """Check every forward of ``model`` inside the block with :func:`check_context` before it runs."""
    longest = [0]  # check (and warn) only when a forward reaches further than any before

    def hook(module, args, kwargs):
        n = forward_length(args, kwargs)
        if n is not None and n > longest[0]:
            longest[0] = n
            check_context(model, n, what)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
