"""Text handling: no silent byte fallback, tokenizers' own special tokens detected and reported."""

import pytest
import torch
from hf_helpers import model_pair
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import circuit_stats
from circuit_stats.protocols.texts import (
    BYTES,
    ByteTokenizer,
    default_texts,
    special_tokens_added,
    tokenize_texts,
)

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

WORDS = "the cat sat on a mat and then the cat ran".split()


def word_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (ids 0 <bos>, 1 <unk>, then WORDS); with ``add_bos`` it puts <bos>
    in front of every text by itself, as Llama's does."""
    vocab = {"<bos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model():
    return model_pair("pythia", vocab_size=256)[0]


def test_strings_without_a_tokenizer_are_refused(model):
    for texts in (["the cat sat"], None):  # None: the bundled sample, strings too
        with pytest.raises(ValueError, match="no tokenizer was given.*tokenizer='bytes'"):
            circuit_stats.score_heads(model, "natural", texts=texts, progress=False)
        with pytest.raises(ValueError, match="no tokenizer was given"):
            circuit_stats.score_heads(model, "sink", texts=texts, progress=False)


def test_bytes_only_when_chosen_and_a_tokenizer_counts_words(model):
    """The issue's finding: the same sentence is 336 byte tokens but 80 word tokens; bytes are now
    an explicit choice, recorded in df.attrs."""
    text = " ".join(WORDS * 9)[:336]
    as_bytes = circuit_stats.score_heads(model, "natural", texts=[text], tokenizer=BYTES, progress=False)
    words = word_tokenizer(False)
    as_words = circuit_stats.score_heads(model, "natural", texts=[text], tokenizer=words, progress=False)
    assert as_bytes.attrs["settings"]["tokenizer"] == "bytes"
    assert as_bytes.attrs["settings"]["n_tokens"] == len(text.encode()) == 336
    assert as_words.attrs["settings"]["tokenizer"] == type(words).__name__
    assert as_words.attrs["settings"]["n_tokens"] == len(text.split()) < 100
    with pytest.raises(ValueError, match="tokenizer must be a tokenizer object"):
        circuit_stats.score_heads(model, "natural", texts=[text], tokenizer="utf8", progress=False)


def test_a_tokenizer_that_adds_a_bos_is_reported(model):
    with_bos, plain = word_tokenizer(True), word_tokenizer(False)
    assert special_tokens_added(with_bos, "the cat") == {"prepended": [0], "appended": []}
    assert special_tokens_added(plain, "the cat") == {"prepended": [], "appended": []}
    assert special_tokens_added(BYTES, "the cat") == {"prepended": [], "appended": []}
    assert special_tokens_added(ByteTokenizer(), "x") == {"prepended": [], "appended": []}
    assert special_tokens_added(lambda s: [1, 2], "x") == "unknown"

    df = circuit_stats.score_heads(model, "natural", texts=["the cat sat on a mat"], tokenizer=with_bos,
                                   progress=False)
    assert df.attrs["settings"]["special_tokens"] == {"prepended": [0], "appended": []}
    assert df.attrs["settings"]["n_tokens"] == 7  # the tokenizer's BOS is part of the text
    with pytest.raises(ValueError, match="already prepends token 0"):
        circuit_stats.score_heads(model, "natural", texts=["the cat"], tokenizer=with_bos, bos_token_id=0,
                                  progress=False)
    # The peers' conventions tokenize without special tokens and put exactly one BOS in front.
    tl = circuit_stats.score_heads(model, "natural", texts=["the cat sat on a mat"], tokenizer=with_bos,
                                   convention="transformerlens", progress=False)
    assert tl.attrs["settings"]["bos_token_id"] == 0 and tl.attrs["settings"]["n_tokens"] == 6
    assert tl.attrs["settings"]["special_tokens"] == {"prepended": [], "appended": []}


def test_tokenize_texts_accepts_ids_and_refuses_bad_ones(model):
    enc = tokenize_texts([[5, 6], torch.tensor([7, 8, 9]), []], None, model)
    assert enc.seqs == [[5, 6], [7, 8, 9]] and enc.tokenizer == "token ids"
    with pytest.raises(TypeError, match="not one string"):
        tokenize_texts("one string", BYTES, model)
    with pytest.raises(ValueError, match="no tokens"):
        tokenize_texts([[]], None, model)
    with pytest.raises(ValueError, match=r"token id -1 \(position 1\) does not fit"):
        tokenize_texts([[3, -1]], None, model)
    small = model_pair("pythia", vocab_size=100)[0]
    with pytest.raises(ValueError, match="ids up to 255"):
        tokenize_texts(["\u00e9t\u00e9"], BYTES, small)
    assert len(default_texts()) >= 3
