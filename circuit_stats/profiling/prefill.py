"""Chunked prefill: run a long sequence through a model in chunks that extend its KV cache.

Activation memory is bounded by the chunk (attention scores by the kernel's own query chunking),
while every query still attends to all the keys before it: statistics recorded with ``record()``
equal those of one full forward (``record()`` continues sequences across cache-extending forwards).
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword under which ``model``'s forward takes the KV cache: ``cache`` from transformers
    5.24, ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def chunked_prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunk_size: int) -> DynamicCache:
    """Feed ``input_ids [B, N]`` (no padding) through ``model`` ``chunk_size`` tokens at a time, each
    chunk extending one ``DynamicCache``; returns the cache. Only the last position's logits are
    computed (``logits_to_keep=1``) where the model supports it."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, n_tokens >= 1], got shape {tuple(input_ids.shape)}")
    cache = DynamicCache()
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    kw = cache_keyword(model)
    for start in range(0, input_ids.shape[1], chunk_size):
        model(input_ids=input_ids[:, start:start + chunk_size], use_cache=True, **{kw: cache}, **extra)
    return cache
