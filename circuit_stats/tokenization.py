"""The byte-level tokenizer: UTF-8 bytes as token ids 0..255.

The bundled demo model was trained on raw bytes. Two forms of the same encoding live here:

* ``ByteTokenizer``: a plain callable ``str -> list[int]`` (what ``tokenizer="bytes"`` selects);
* ``byte_level_tokenizer()``: a transformers ``PreTrainedTokenizerFast`` built with the
  ``tokenizers`` library (GPT-2's byte-to-character map, one vocabulary entry per byte, no
  merges), which every bundled checkpoint ships as ``tokenizer.json`` + ``tokenizer_config.json``
  so that ``AutoTokenizer.from_pretrained(checkpoint)`` (and tools built on it: nnsight,
  lm-eval) load it like any hub model's.

Both give ``list(text.encode("utf-8"))`` for every string. The transformers tokenizer adds no
special token by default (the model was trained on bytes without a BOS); its ``bos_token`` and
``eos_token`` are declared as the byte the model's config names (id 0 for the demo), so
``tokenizer.bos_token_id`` equals ``config.bos_token_id`` (the EOS byte also pads batches), and ``split_special_tokens`` is on, so
that a text holding that byte's character is still encoded as its UTF-8 bytes.

    python -m circuit_stats.demo.tokenizer [CHECKPOINT_DIR ...]   # default: every bundled checkpoint
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

BYTES = "bytes"  # tokenizer="bytes": UTF-8 bytes as token ids
VOCAB_SIZE = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class ByteTokenizer:
    """UTF-8 bytes as token ids (chosen with ``tokenizer="bytes"``; needs a vocabulary >= 256, or
    >= 128 for ASCII text). The bundled demo model is trained on this encoding."""

    name = BYTES

    def __call__(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def resolve_tokenizer(tokenizer):
    """``"bytes"`` -> :class:`ByteTokenizer`; a callable (e.g. a transformers tokenizer) as is."""
    if tokenizer == BYTES:
        return ByteTokenizer()
    if tokenizer is None or isinstance(tokenizer, str) or not callable(tokenizer):
        raise ValueError("tokenizer must be a tokenizer (e.g. AutoTokenizer.from_pretrained(...)) or the explicit "
                         f"choice 'bytes' (UTF-8 bytes as token ids, for byte-level models), got {tokenizer!r}")
    return tokenizer


def encode(tokenizer, text, add_special_tokens: bool) -> list[int]:
    """``text``'s token ids with a resolved tokenizer (a :class:`ByteTokenizer`, a transformers
    tokenizer, or any callable ``str -> ids``); token ids given instead of a string as they are."""
    if not isinstance(text, str):
        return [int(i) for i in text]
    if tokenizer is None:
        raise ValueError("texts are strings but no tokenizer was given: pass tokenizer=<a tokenizer> or "
                         "tokenizer='bytes' (UTF-8 bytes as token ids) explicitly")
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer(text)
    ids = tokenizer(text, add_special_tokens=add_special_tokens)
    if hasattr(ids, "input_ids") or isinstance(ids, dict):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def token_string(tokenizer, token_id: int) -> str:
    """One token's text for tables: the UTF-8 byte (``"bytes"`` or a :class:`ByteTokenizer`;
    invalid alone: ``\\xNN``), a transformers tokenizer's ``decode([token_id])``, or ``""`` when
    the tokenizer cannot say (None, a plain callable)."""
    if tokenizer == BYTES or isinstance(tokenizer, ByteTokenizer):
        return bytes([token_id]).decode("utf-8", errors="backslashreplace") if 0 <= token_id < VOCAB_SIZE else ""
    decode = getattr(tokenizer, "decode", None)
    return decode([token_id]) if callable(decode) else ""


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


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character (what ``ByteLevel``
    pre-tokenization produces), e.g. 32 (space) -> "Ġ", 0 -> "Ā"."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def byte_level_backend():
    """A ``tokenizers.Tokenizer`` mapping every string to its UTF-8 bytes (ids 0..255) and back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: b for b, char in byte_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def byte_level_tokenizer(bos_token_id: Optional[int] = 0, eos_token_id: Optional[int] = 0,
                         model_max_length: Optional[int] = None, pad_token_id: Optional[int] = None):
    """A transformers fast tokenizer over UTF-8 bytes that adds no special token by default.

    Args:
        bos_token_id, eos_token_id: the byte declared as BOS / EOS (None: none), as in the model's
            config; declared only, never added to a text.
        model_max_length: the model's context (``max_position_embeddings``), if known.
        pad_token_id: the byte that pads batches (``padding=True``; masked out by the attention
            mask); default: the EOS byte, as GPT-2 and Pythia users set it.
    """
    from transformers import PreTrainedTokenizerFast

    chars = byte_to_unicode()
    pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
    special = {name: chars[int(i)] for name, i in (("bos_token", bos_token_id), ("eos_token", eos_token_id),
                                                   ("pad_token", pad_token_id)) if i is not None}
    extra = {"model_max_length": int(model_max_length)} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=byte_level_backend(), split_special_tokens=True,
                                   clean_up_tokenization_spaces=False, **special, **extra)


def write_byte_tokenizer(checkpoint: Path) -> list[Path]:
    """Write the byte-level tokenizer into a checkpoint folder, its BOS/EOS and context taken from
    the folder's ``config.json``. Returns the files written."""
    checkpoint = Path(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    if config.get("vocab_size") != VOCAB_SIZE:
        raise ValueError(f"{checkpoint}: vocab_size {config.get('vocab_size')} is not a byte-level model's "
                         f"({VOCAB_SIZE})")
    tok = byte_level_tokenizer(config.get("bos_token_id"), config.get("eos_token_id"),
                               config.get("max_position_embeddings"), config.get("pad_token_id"))
    tok.save_pretrained(checkpoint)
    cfg_path = checkpoint / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # the name every transformers 5.x knows
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [checkpoint / f for f in TOKENIZER_FILES]
