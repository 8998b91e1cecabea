"""``score_heads``: one call from a model to a per-(layer, head) table of scores and labels."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import pandas as pd
import torch

from .finite import check_finite, float_columns
from .models import uses_circuit_stats
from .models.wrapped import unwrap_model
from .models.context import context_guard
from .protocols import get_protocol
from .protocols.engine import check_bos_token_id, model_device


def score_heads(
    model: torch.nn.Module,
    protocol: str,
    *,
    tokenizer=None,
    texts: Optional[Sequence[Union[str, Sequence[int]]]] = None,
    batch_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    bos_token_id: Optional[int] = None,
    progress: bool = True,
    **protocol_options,
) -> pd.DataFrame:
    """Score every attention head of ``model`` with ``protocol``, through the fused kernel.

    Args:
        model: a transformers causal LM using ``attn_implementation="circuit_stats"``, or an nnsight
            ``LanguageModel`` wrapping one.
        protocol: ``"xu2026"``, ``"repeat"``, ``"sink"``, ``"natural"`` or ``"retrieval"`` (see
            the README).
        tokenizer, texts: natural-text input for ``"sink"`` / ``"natural"``: token-id lists, or
            strings tokenized with ``tokenizer`` (a transformers tokenizer, a callable, or
            ``"bytes"`` for UTF-8 bytes; strings without a tokenizer are refused). Default texts:
            the bundled sample (strings).
        batch_size: sequences per forward (protocol default when None).
        device: where to run (default: the model's device; the model is moved there).
        bos_token_id: prepend this token to every sequence, to tell a real BOS sink from a
            position-0 sink (``convention="transformerlens"`` uses the tokenizer's BOS, else the
            model config's, when None; ``"gu2025"`` then keeps what the tokenizer adds by default,
            as Gu et al.'s code does).
        **protocol_options: e.g. ``n_sequences``, ``seq_len``, ``seed``, ``thresholds``,
            ``convention``; see each protocol's ``DEFAULTS``. Unknown keys (also inside
            ``thresholds``) and out-of-range values are refused before the model runs.

    Returns:
        A DataFrame with ``layer``, ``head``, the protocol's score columns and ``label``;
        ``df.attrs`` records the protocol, its exact settings, the dtype and the model.

    Raises:
        NonFiniteError: a score is NaN or infinite (the model's activations are not finite,
            e.g. NaN weights), except where the protocol defines NaN (``Protocol.nan_scores``).
    """
    spec = get_protocol(protocol)
    protocol_options = spec.check_options(protocol_options)  # before any model work
    model = unwrap_model(model)  # an nnsight LanguageModel: the transformers model it wraps
    if not uses_circuit_stats(model):
        raise ValueError("score_heads needs a model loaded with attn_implementation='circuit_stats' "
                         "(or switched with model.set_attn_implementation('circuit_stats'))")
    check_bos_token_id(model, bos_token_id)  # before any forward
    if device is not None:
        model.to(device)
    kwargs = dict(device=model_device(model), bos_token_id=bos_token_id, progress=progress, **protocol_options)
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        kwargs["batch_size"] = int(batch_size)
    if spec.takes_texts:
        kwargs.update(tokenizer=tokenizer, texts=texts)
    elif texts is not None or tokenizer is not None:
        raise ValueError(f"protocol {protocol!r} generates its own sequences; texts/tokenizer are not used")
    with context_guard(model, f"protocol {protocol!r}"):  # refuse positions past a learned table
        df = spec.score(model, **kwargs)
    check_finite(df, float_columns(df, exclude=spec.nan_scores), f"{protocol} scores")
    df.attrs.update(
        protocol=protocol,
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        model=getattr(model.config, "_name_or_path", "") or type(model).__name__,
    )
    return df
