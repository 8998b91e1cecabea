"""The byte-level tokenizer: the bundled checkpoints load it with AutoTokenizer, and it encodes
every string to its UTF-8 bytes exactly as ``tokenizer="bytes"`` does."""

import json
import random
import shutil

import pytest
from transformers import AutoTokenizer

from circuit_stats.demo.tokenizer import bundled_checkpoints
from circuit_stats.tokenization import (
    TOKENIZER_FILES,
    ByteTokenizer,
    byte_level_tokenizer,
    token_string,
    write_byte_tokenizer,
)

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

# ASCII, Latin-1, 3- and 4-byte characters, the characters of bytes 0 and 32 in GPT-2's byte map
# ("Ā", "Ġ"), NUL (the demo's BOS byte), control characters and a leading space.
MIXED = " Hello, wörld! naïve ∑ 日本語 🙂🚀 ĀĠ \x00\x01\t\nend"


def random_text(rng: random.Random, n: int) -> str:
    """Code points from every UTF-8 length class (surrogates excluded)."""
    ranges = [(0, 127), (128, 2047), (2048, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


def test_every_bundled_checkpoint_loads_its_byte_tokenizer():
    checkpoints = bundled_checkpoints()
    assert len(checkpoints) == 23
    for d in checkpoints:
        tok = AutoTokenizer.from_pretrained(d)
        config = json.loads((d / "config.json").read_text())
        ids = tok(MIXED)["input_ids"]
        assert ids == list(MIXED.encode("utf-8")) == ByteTokenizer()(MIXED), d.name
        assert tok(MIXED, add_special_tokens=True)["input_ids"] == ids  # no BOS added by default
        assert tok.decode(ids) == MIXED
        assert tok.bos_token_id == config["bos_token_id"] and tok.eos_token_id == config["eos_token_id"]
        assert len(tok) == config["vocab_size"] == 256
        assert tok.model_max_length == config["max_position_embeddings"]
    batch = tok([MIXED, "ab"], padding=True, return_tensors="pt")  # pads with the EOS byte, masked out
    assert batch["input_ids"][1].tolist() == [97, 98] + [0] * (len(MIXED.encode()) - 2)
    assert batch["attention_mask"][1].tolist() == [1, 1] + [0] * (len(MIXED.encode()) - 2)


def test_random_strings_encode_to_their_bytes_and_back(seed):
    rng = random.Random(seed)
    tok = byte_level_tokenizer()
    for n in (1, 2, 7, 64, 300):
        text = random_text(rng, n)
        ids = tok(text)["input_ids"]
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert sorted(tok.get_vocab().values()) == list(range(256))


def test_bundled_files_are_what_the_builder_writes(tmp_path):
    """The shipped files are up to date with ``write_byte_tokenizer`` (re-run
    ``python -m circuit_stats.demo.tokenizer`` after changing it)."""
    for d in (bundled_checkpoints()[0], bundled_checkpoints()[-1]):
        copy = tmp_path / d.name
        copy.mkdir()
        shutil.copy(d / "config.json", copy)
        write_byte_tokenizer(copy)
        for name in TOKENIZER_FILES:
            assert (copy / name).read_bytes() == (d / name).read_bytes(), (d.name, name)


def test_a_model_that_is_not_byte_level_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 50304, "bos_token_id": 0}))
    with pytest.raises(ValueError, match="vocab_size 50304"):
        write_byte_tokenizer(tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()


def test_no_bos_declared_when_the_config_has_none():
    tok = byte_level_tokenizer(bos_token_id=None, eos_token_id=None)
    assert tok.bos_token_id is None and tok.pad_token_id is None and tok("ab")["input_ids"] == [97, 98]


def test_new_demo_checkpoints_carry_the_tokenizer(tmp_path):
    from circuit_stats.demo.train import train

    train(tmp_path / "series", steps=1, schedule=[0, 1], monitor_every=0, log=lambda *_: None)
    for step in (0, 1):
        d = tmp_path / "series" / f"checkpoint-{step}"
        tok = AutoTokenizer.from_pretrained(d)
        assert tok(MIXED)["input_ids"] == list(MIXED.encode("utf-8")) and tok.bos_token_id == 0
        for name in TOKENIZER_FILES:
            assert (d / name).read_bytes() == (bundled_checkpoints()[0] / name).read_bytes()


def test_token_string_names_one_token():
    assert token_string("bytes", 10) == "\n" and token_string(ByteTokenizer(), 65) == "A"
    assert token_string("bytes", 0xC8) == "\\xc8"  # a lone continuation-range byte is not text
    assert token_string(byte_level_tokenizer(), 65) == "A"  # a transformers tokenizer decodes it
    assert token_string(None, 65) == "" and token_string(lambda s: [1], 65) == ""
