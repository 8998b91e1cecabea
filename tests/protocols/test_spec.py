"""Every protocol validates its options through ``Protocol.check_options``, before any model work."""

import pytest

import circuit_stats
from circuit_stats.protocols import PROTOCOLS, get_protocol

BAD = [  # (protocol, options, error type, message)
    ("repeat", {"n_seqs": 3}, ValueError, "unknown repeat options \\['n_seqs'\\]"),
    ("repeat", {"thresholds": {"inductoin": 0.1}}, ValueError, "unknown keys \\['inductoin'\\] in repeat option 'thresholds'"),
    ("repeat", {"thresholds": 0.4}, TypeError, "'thresholds' must be a mapping"),
    ("repeat", {"thresholds": {"induction": 1.5}}, ValueError, "thresholds\\['induction'\\] must be a number in \\[0, 1\\]"),
    ("repeat", {"seq_len": 1}, ValueError, "'seq_len' must be an int >= 2"),
    ("repeat", {"seq_len": 8.0}, TypeError, "'seq_len' must be int"),
    ("repeat", {"n_sequences": 0}, ValueError, "'n_sequences' must be an int >= 1"),
    ("repeat", {"vocab_range": (5,)}, ValueError, "vocab_range"),
    ("natural", {"max_tokens": 1}, ValueError, "'max_tokens' must be an int >= 2 or None"),
    ("natural", {"convention": "TL"}, ValueError, "'convention' must be one of"),
    ("natural", {"exclude_bos": 1}, TypeError, "'exclude_bos' must be bool"),
    ("natural", {"thresholds": {"sink": 0.5, "self": 0.1}}, ValueError, "unknown keys \\['self'\\]"),
    ("sink", {"eps": 0.0}, ValueError, "'eps' must be a number in \\(0, 1\\)"),
    ("sink", {"eps": 1}, ValueError, "'eps' must be a number in \\(0, 1\\)"),
    ("sink", {"seq_len": 1}, ValueError, "'seq_len'"),
    ("sink", {"n_sequences": 0}, ValueError, "'n_sequences' must be an int >= 1 or None"),
    ("sink", {"convention": "gu"}, ValueError, "'convention' must be one of"),
    ("xu2026", {"seq_len": 129}, ValueError, "'seq_len' must be an int >= 130"),
    ("xu2026", {"n_baseline": 0}, ValueError, "'n_baseline'"),
    ("xu2026", {"class_threshold": -1.0}, ValueError, "'class_threshold'"),
    ("xu2026", {"class_threshold": "30"}, TypeError, "'class_threshold' must be float"),
    ("xu2026", {"seed": -1}, ValueError, "'seed'"),
    ("xu2026", {"baseline_seed": 2**32}, ValueError, "'baseline_seed' must be an int in \\[0, 4294967295\\]"),
    ("repeat", {"seed": -3}, ValueError, "'seed' must be an int in \\[0, 4294967295\\], got -3"),
    ("repeat", {"seed": 2**64}, ValueError, "'seed' must be an int in \\[0, 4294967295\\]"),
    # retrieval (issue 19): each of these was accepted, or failed after the model ran
    ("retrieval", {"n_needles": 0}, ValueError, "'n_needles' must be an int >= 1, got 0"),
    ("retrieval", {"seed": -3}, ValueError, "'seed' must be an int in \\[0, 4294967295\\], got -3"),
    ("retrieval", {"seed": 2**32 - 1, "context_lengths": [64, 96]}, ValueError, "'seed' must be an int in \\[0, 4294967294\\]"),
    ("retrieval", {"threshold": -0.5}, ValueError, "'threshold' must be a number in \\(0.0, 1.0\\], got -0.5"),
    ("retrieval", {"threshold": 0}, ValueError, "'threshold' must be a number in \\(0.0, 1.0\\]"),
    ("retrieval", {"success_recall": 3}, ValueError, "'success_recall' must be a number in \\[0.0, 1.0\\), got 3"),
    ("retrieval", {"success_recall": 1.0}, ValueError, "'success_recall' must be a number in \\[0.0, 1.0\\)"),
    ("retrieval", {"needle_len": 1}, ValueError, "'needle_len' must be an int >= 2"),
    ("retrieval", {"prefix_len": 0}, ValueError, "'prefix_len' must be an int in \\[1, 15\\]"),
    ("retrieval", {"prefix_len": 16}, ValueError, "'prefix_len' must be an int in \\[1, 15\\]"),
    ("retrieval", {"context_lengths": []}, ValueError, "'context_lengths' must be a non-empty list"),
    ("retrieval", {"context_lengths": [20]}, ValueError, "'context_lengths' .* ints > needle_len \\+ prefix_len = 20"),
    ("retrieval", {"context_lengths": [64.5]}, ValueError, "'context_lengths'"),
    ("retrieval", {"depths": []}, ValueError, "'depths' must be a non-empty list of numbers in \\[0, 1\\]"),
    ("retrieval", {"depths": [0.5, -0.1]}, ValueError, "'depths'"),
    ("retrieval", {"vocab_range": [9, 3]}, ValueError, "'vocab_range'"),
    ("retrieval", {"chunk_size": 0}, ValueError, "'chunk_size' must be an int >= 1"),
    ("retrieval", {"n_needles": "2"}, TypeError, "'n_needles' must be int"),
]


@pytest.mark.parametrize("name,options,error,match", BAD)
def test_bad_options_are_refused_before_any_model_work(name, options, error, match):
    with pytest.raises(error, match=match):
        get_protocol(name).check_options(options)
    with pytest.raises(error, match=match):  # the model is never touched: no model at all will do
        circuit_stats.score_heads(object(), name, **options)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_defaults_are_valid_and_resolving_is_idempotent(name):
    spec = get_protocol(name)
    resolved = spec.check_options({})
    assert resolved == dict(spec.defaults)
    assert spec.check_options(resolved) == resolved


def test_partial_thresholds_keep_the_other_defaults():
    o = get_protocol("natural").check_options({"thresholds": {"induction": 0.2}})
    assert o["thresholds"] == {"induction": 0.2, "duplicate": 0.3, "previous_token": 0.4, "sink": 0.5}


def test_unknown_protocol():
    with pytest.raises(ValueError, match="protocol must be one of"):
        circuit_stats.score_heads(object(), "nope")
