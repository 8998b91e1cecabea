"""Score every head of a model that is in the middle of training, and leave no trace.

:func:`score_live_model` runs :func:`circuit_stats.score_heads` under ``torch.no_grad()`` in eval
mode through the fused kernel, on the model's own device, and restores afterwards everything
training depends on: the train/eval mode, the attention implementation the model trains with
(``sdpa``, ``eager``, ...) and the random number streams (Python, NumPy, torch CPU and every
CUDA device), so a run with monitoring produces the same weights as one without. Parameters,
gradients and optimizer state are never written.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from ..models import IMPLEMENTATION, uses_circuit_stats
from ..protocols import get_protocol
from ..scoring import score_heads


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` (scoring through the
    wrapper would start collective operations on one rank only)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def check_replicated(model: torch.nn.Module) -> None:
    """Refuse sharded models (FSDP, DTensor parameters): one process does not hold the weights."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # torch built without distributed
        return
    if isinstance(model, FullyShardedDataParallel) or any(
            type(p).__name__ == "DTensor" for p in model.parameters()):
        raise NotImplementedError("circuit-stats training monitors need the full weights on the main process "
                                  "(DDP / single device); FSDP and other sharded models are not supported")


@contextmanager
def preserved_rng_states() -> Iterator[None]:
    """Restore the Python, NumPy, torch CPU and all CUDA generators on exit."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def scoring_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` switched to ``attn_implementation="circuit_stats"``, eval mode and no grad;
    the attention implementation, the mode and the RNG streams are restored on exit."""
    was_training = model.training
    previous = model.config._attn_implementation
    switch = not uses_circuit_stats(model)
    with preserved_rng_states():
        try:
            if switch:
                model.set_attn_implementation(IMPLEMENTATION)
            model.eval()
            with torch.no_grad():
                yield model
        finally:
            if switch:
                model.set_attn_implementation(previous)
            model.train(was_training)


def score_live_model(model: torch.nn.Module, protocol: str, options: Mapping) -> pd.DataFrame:
    """``score_heads(model, protocol, **options)`` on a training model, leaving it as it was.

    The forward runs on ``model.base_model`` (the transformer without the LM head): attention
    statistics do not depend on the head, and skipping the vocabulary projection halves the cost
    of scoring small models with large vocabularies (Pythia-70M: 26M of its 45M matmul
    parameters are the unembedding). The scores equal those of the full model (tested). A protocol
    that generates (``retrieval``: ``Protocol.needs_lm_head``) runs on the full model.

    Returns one row per (layer, head): ``layer``, ``head``, the protocol's scores and ``label``."""
    model = unwrap_model(model)
    target = model if get_protocol(protocol).needs_lm_head else getattr(model, "base_model", model)
    with scoring_mode(model):
        return score_heads(target, protocol, progress=False, **options)
