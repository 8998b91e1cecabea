"""Head-class labels: flags and the primary label from thresholds."""

import pandas as pd
import pytest

from circuit_stats.labels import HEAD_CLASSES, flag_column, label_heads


def test_label_heads_picks_the_strongest_passing_class():
    scores = pd.DataFrame({"induction": [0.9, 0.5, 0.1], "sink": [0.95, 0.2, 0.1]})
    out = label_heads(scores, {"induction": 0.4, "sink": 0.5}, {"induction": "induction", "sink": "first-token"})
    assert list(out["label"]) == ["first-token", "induction", "unclassified"]
    assert list(out["is_induction"]) == [True, True, False] and list(out["is_first_token"]) == [True, False, False]


def test_flag_column():
    assert flag_column("first-token") == "is_first_token"
    assert len({flag_column(c) for c in HEAD_CLASSES}) == len(HEAD_CLASSES)
    with pytest.raises(ValueError, match="label must be one of"):
        flag_column("sink")


def test_label_heads_refuses_nan_scores_instead_of_calling_them_unclassified():
    from circuit_stats.finite import NonFiniteError

    scores = pd.DataFrame({"layer": [0, 1], "head": [2, 3], "induction": [0.9, float("nan")], "sink": [0.1, 0.1]})
    with pytest.raises(NonFiniteError, match=r"\['induction'\] are NaN or infinite in 1 of 2 rows, first at layer 1 head 3"):
        label_heads(scores, {"induction": 0.4, "sink": 0.5}, {"induction": "induction", "sink": "first-token"})
