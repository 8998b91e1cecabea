"""The simulated token streams keep the properties their docstrings promise."""

import pytest
import torch

from bench import token_streams


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("stream", list(token_streams.STREAMS_AND_UNIFORM))
def test_every_stream_gives_n_ids_in_its_vocabulary(stream):
    for n in (1, 513, 2000):
        ids = token_streams.STREAMS_AND_UNIFORM[stream](n, gen(n))
        assert ids.shape == (n,) and ids.dtype == torch.int64
        assert 0 <= int(ids.min()) and int(ids.max()) < token_streams.VOCAB


def test_repeated_random_repeats_its_512_tokens_and_few_tokens_has_four():
    ids = token_streams.repeated_random(2000, gen())
    assert torch.equal(ids[512:1024], ids[:512]) and torch.equal(ids[1536:], ids[:2000 - 1536])
    assert set(token_streams.few_tokens(1000, gen()).tolist()) <= {0, 1, 2, 3}


def test_code_lines_end_in_the_newline_token_and_repeat_more_than_prose():
    code, prose = token_streams.code(4096, gen()), token_streams.prose(4096, gen())
    assert 4096 / 17 <= int((code == 0).sum()) <= 4096 / 5  # lines of 4-16 tokens and their newline
    assert code.unique().numel() < prose.unique().numel()


def test_token_batch_draws_each_row_and_names_an_unknown_stream():
    batch = token_streams.token_batch("uniform", 3, 64, gen())
    assert batch.shape == (3, 64) and not torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="stream: expected one of .*'uniform'.*got 'poetry'"):
        token_streams.token_batch("poetry", 1, 8, gen())
