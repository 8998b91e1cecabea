"""Token ids are checked against the model's vocabulary before any forward, and an error names
the argument, the offending id and the vocabulary size."""

import pytest
from hf_helpers import model_pair

import circuit_stats
from circuit_stats.protocols import PROTOCOLS
from circuit_stats.protocols.texts import tokenize_texts

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

VOCAB = 256


@pytest.fixture(scope="module")
def model():
    return model_pair("pythia", vocab_size=VOCAB)[0]


def no_forward(model):
    """A forward pre-hook that fails the test if the model runs."""
    def hook(*_):
        raise AssertionError("the model ran before the bad input was refused")
    return model.register_forward_pre_hook(hook)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("bos, error, match", [
    (VOCAB, ValueError, f"bos_token_id {VOCAB} is outside the model's vocabulary of {VOCAB} \\(ids 0..{VOCAB - 1}\\)"),
    (10 ** 6, ValueError, f"bos_token_id 1000000 is outside the model's vocabulary of {VOCAB}"),
    (-1, ValueError, f"bos_token_id -1 is outside the model's vocabulary of {VOCAB}"),
    (True, TypeError, "bos_token_id must be an int token id"),
    ("1", TypeError, "bos_token_id must be an int token id"),
])
def test_bos_token_id_outside_the_vocabulary_is_refused_before_any_forward(model, protocol, bos, error, match):
    kw = dict(tokenizer="bytes") if PROTOCOLS[protocol].takes_texts else {}
    handle = no_forward(model)
    try:
        with pytest.raises(error, match=match):
            circuit_stats.score_heads(model, protocol, bos_token_id=bos, progress=False, **kw)
    finally:
        handle.remove()


def test_an_out_of_vocabulary_text_id_is_named_with_its_text_and_position(model):
    with pytest.raises(ValueError, match=f"texts\\[2\\]: token id 300 \\(position 1\\) does not fit the model's "
                                         f"vocabulary of {VOCAB} \\(ids 0..{VOCAB - 1}\\)"):
        tokenize_texts([[3, 4], [], [5, 300, 7, 400]], None, model)  # 400 is the largest, 300 the first
    with pytest.raises(ValueError, match="texts\\[0\\]: token id -2 \\(position 1\\)"):
        tokenize_texts([[3, -2, 999]], None, model)
    handle = no_forward(model)
    try:
        with pytest.raises(ValueError, match="texts\\[1\\]: token id 256"):
            circuit_stats.score_heads(model, "natural", texts=[[1, 2, 3], [4, 256, 5, 700]], progress=False)
    finally:
        handle.remove()
