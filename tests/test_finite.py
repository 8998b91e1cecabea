"""check_finite: NaN, +-inf and missing values in any score column are refused, naming them."""

import pandas as pd
import pytest

from circuit_stats.finite import NonFiniteError, check_finite, float_columns, non_finite_rows


def test_nan_inf_and_missing_values_are_found_and_named():
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "a": [0.1, float("-inf"), 0.3, 0.4],
                       "b": pd.array([0.5, 0.5, None, 0.5], dtype="Float64"), "c": [1.0, 2.0, 3.0, 4.0],
                       "flag": [True, False, True, False]})
    assert float_columns(df) == ["a", "b", "c"] and float_columns(df, exclude=("b",)) == ["a", "c"]
    assert non_finite_rows(df, ["a", "b", "c"]).tolist() == [False, True, True, False]
    with pytest.raises(NonFiniteError, match=r"my scores: \['a', 'b'\] are NaN or infinite in 2 of 4 rows, first at "
                                             r"layer 0 head 1"):
        check_finite(df, ["a", "b", "c"], "my scores")
    check_finite(df, ["c"], "my scores")  # finite columns pass
    check_finite(df.iloc[[0, 3]], ["a", "b", "c"], "my scores")
