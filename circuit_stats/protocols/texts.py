"""Text handling for the text protocols: tokenizers, the bundled sample, batching.

Strings need a tokenizer: a transformers tokenizer, any callable ``str -> ids``, or the explicit
choice ``tokenizer="bytes"`` (UTF-8 bytes as ids, what the bundled demo model was trained on).
Strings without a tokenizer are refused rather than silently read as bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Mapping, Optional, Sequence, Union

import torch
from transformers import PreTrainedTokenizerBase

from ..tokenization import BYTES, ByteTokenizer
from .engine import Batch, first_out_of_vocabulary, prepend_bos, vocab_size

__all__ = ["BYTES", "ByteTokenizer", "EncodedTexts", "default_texts", "special_tokens_added", "tokenizer_bos_id", "config_bos_id",
           "tokenize_texts", "pad_right", "text_batches", "check_no_double_bos"]


@dataclass
class EncodedTexts:
    """Token-id lists and how they were made.

    Attributes:
        seqs: one token-id list per non-empty text.
        tokenizer: ``"bytes"``, ``"token ids"`` (no strings given) or the tokenizer's class name.
        special_tokens: what the tokenizer adds around a text by itself, ``{"prepended": [ids],
            "appended": [ids]}`` (empty lists when nothing is added), or ``"unknown"`` for a plain
            callable that cannot be asked.
    """

    seqs: list[list[int]]
    tokenizer: str
    special_tokens: Union[dict, str]


def default_texts() -> list[str]:
    """The bundled text sample (written for the project), one passage per paragraph."""
    raw = resources.files("circuit_stats").joinpath("data/sample_texts.txt").read_text(encoding="utf-8")
    return [p.strip().replace("\n", " ") for p in raw.split("\n\n") if p.strip()]


def _call(tok, text: str, add_special_tokens: Optional[bool]) -> list[int]:
    if isinstance(tok, PreTrainedTokenizerBase) and add_special_tokens is not None:
        ids = tok(text, add_special_tokens=add_special_tokens)
    else:
        ids = tok(text)
    if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):  # a transformers BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def special_tokens_added(tokenizer, text: str) -> Union[dict, str]:
    """The ids a tokenizer puts before and after ``text`` on its own (e.g. a BOS), found by
    comparing its default call with ``add_special_tokens=False``."""
    if tokenizer == BYTES or isinstance(tokenizer, ByteTokenizer):
        return {"prepended": [], "appended": []}
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        return "unknown"
    full, bare = _call(tokenizer, text, True), _call(tokenizer, text, False)
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return {"prepended": full[:i], "appended": full[i + len(bare):]}
    return "unknown"


def tokenizer_bos_id(tokenizer) -> Optional[int]:
    """The tokenizer's BOS id (``bos_token_id``), if it has one."""
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer not in (None, BYTES) else None
    return None if bos is None else int(bos)


def config_bos_id(model) -> Optional[int]:
    """The model config's ``bos_token_id`` (its text config's for multimodal models), if any."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    bos = getattr(config, "bos_token_id", None)
    return None if bos is None or isinstance(bos, (list, tuple)) else int(bos)


def tokenize_texts(texts, tokenizer, model, *, add_special_tokens: Optional[bool] = None) -> EncodedTexts:
    """Token-id lists from ``texts`` (strings, or already token ids; None: the bundled sample).

    Args:
        texts: a list of strings and/or token-id sequences.
        tokenizer: a transformers tokenizer, a callable ``str -> ids``, ``"bytes"``, or None (only
            when no text is a string).
        model: the model whose vocabulary the ids must fit.
        add_special_tokens: passed to a transformers tokenizer (None: its default).
    """
    if texts is None:
        texts = default_texts()
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a list of strings or of token-id lists, not one string")
    texts = list(texts)
    strings = [t for t in texts if isinstance(t, str)]
    if strings and tokenizer is None:
        raise ValueError("texts holds strings but no tokenizer was given: pass tokenizer= (a transformers "
                         f"tokenizer or a callable), or tokenizer={BYTES!r} to score UTF-8 bytes as token ids "
                         "(texts=None means the bundled sample, which is strings too)")
    if isinstance(tokenizer, str) and tokenizer != BYTES:
        raise ValueError(f"tokenizer must be a tokenizer object, a callable or {BYTES!r}, got {tokenizer!r}")
    tok = ByteTokenizer() if tokenizer == BYTES else tokenizer
    all_ids = []
    for t in texts:
        if isinstance(t, str):
            ids = _call(tok, t, add_special_tokens)
        elif isinstance(t, torch.Tensor):
            ids = t.reshape(-1).tolist()
        else:
            ids = [int(x) for x in t]
        all_ids.append(ids)
    out = [ids for ids in all_ids if ids]
    if not out:
        raise ValueError("texts: no tokens to score")
    v = vocab_size(model)
    bad = first_out_of_vocabulary(all_ids, v)
    if bad is not None:
        n, pos, i = bad
        raise ValueError(f"texts[{n}]: token id {i} (position {pos}) does not fit the model's vocabulary of {v} "
                         f"(ids 0..{v - 1})" + (" (tokenizer='bytes' gives ids up to 255)" if tokenizer == BYTES else ""))
    if not strings:
        name, special = "token ids", {"prepended": [], "appended": []}
    else:
        name = BYTES if tokenizer == BYTES else type(tokenizer).__name__
        special = ({"prepended": [], "appended": []} if add_special_tokens is False and
                   isinstance(tok, PreTrainedTokenizerBase) else special_tokens_added(tok, strings[0]))
    return EncodedTexts(out, name, special)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[B, N]`` and attention mask ``[B, N]`` for a list of token-id lists."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s))
        mask[i, : len(s)] = 1
    return ids, mask


def text_batches(seqs: Sequence[Sequence[int]], batch_size: int, bos_token_id: Optional[int]) -> Iterable[Batch]:
    """Right-padded batches of token-id lists, each optionally behind a BOS-like token."""
    for s in range(0, len(seqs), batch_size):
        ids, mask = pad_right(seqs[s : s + batch_size])
        if bos_token_id is not None:
            ids, mask = prepend_bos(ids, bos_token_id), prepend_bos(mask, 1)
        yield Batch(ids, mask)


def check_no_double_bos(encoded: EncodedTexts, bos_token_id: Optional[int]) -> None:
    """Refuse ``bos_token_id`` when the tokenizer already puts that id in front of every text."""
    special = encoded.special_tokens
    if bos_token_id is not None and isinstance(special, dict) and special["prepended"][-1:] == [int(bos_token_id)]:
        raise ValueError(f"the tokenizer already prepends token {bos_token_id}; bos_token_id={bos_token_id} would "
                         "put a second one in front of every text (leave bos_token_id=None)")
