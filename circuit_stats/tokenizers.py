"""Loading a tokenizer by name or folder, with one error message for every command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


def load_tokenizer(source: Union[str, Path], *, revision: Optional[str] = None, what: str = "texts"):
    """``AutoTokenizer.from_pretrained(source, revision=revision)``; a ``ValueError`` naming
    ``what`` needs it and the way out (``--tokenizer``) when none loads, or when the one that loads
    has no vocabulary (a folder without tokenizer files gives such an empty tokenizer)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except Exception as err:  # OSError, ValueError, a hub error: the same way out for each
        why = type(err).__name__
    else:
        if tokenizer("hello world", add_special_tokens=False)["input_ids"]:
            return tokenizer
        why = "it has no vocabulary"
    raise ValueError(f"{what}: no usable tokenizer could be loaded from {source} ({why}); pass --tokenizer NAME, "
                     "or --tokenizer bytes for a byte-level model (UTF-8 bytes as token ids)")
