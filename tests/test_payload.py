"""Request parsing of the Bento service: the three shapes, and every refusal names the fault."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelship.bentos.payload import BadPayload, to_matrix

COLUMNS = ["a", "b", "c"]


def test_records_columns_and_rows_give_the_same_matrix() -> None:
    records = [{"a": 1, "b": 2.5, "c": -3}, {"c": 6, "b": 5, "a": 4}]
    columnar = {"b": [2.5, 5], "a": [1, 4], "c": [-3, 6]}
    rows = [[1, 2.5, -3], [4, 5, 6]]
    expected = np.array(rows, np.float32)
    for given in (records, columnar, rows):
        got = to_matrix(given, COLUMNS, max_rows=10)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"a": 1, "b": 2, "x": 3}], "row 0 has unknown column 'x'"),
        ([{"a": 1, "b": 2}], "row 0 is missing column 'c'"),
        ([{"a": 1, "b": 2, "c": 3}, [1, 2, 3]], "row 1 is a list"),
        ({"a": [1], "b": [2]}, "column 'c' is missing"),
        ({"a": [1], "b": [2], "c": [3], "d": [4]}, "unknown column 'd'"),
        ({"a": [1, 2], "b": [2], "c": [3]}, "different lengths"),
        ({"a": 1, "b": 2, "c": 3}, "column 'a' is a int"),
        ([[1, 2]], "row 0 has 2 values; the model takes 3"),
        ([[1, "2", 3]], "row 0, column 'b' is str '2'; send a number"),
        ([{"a": 1, "b": None, "c": 3}], "row 0, column 'b' is null"),
        ([], "no rows"),
        ("1,2,3", "inputs is a str"),
        ([[1, 2, 3]] * 11, "11 rows in one request, more than the limit of 10"),
    ],
)
def test_malformed_inputs_are_refused_with_what_to_fix(inputs: object, message: str) -> None:
    with pytest.raises(BadPayload) as err:
        to_matrix(inputs, COLUMNS, max_rows=10)
    assert message in str(err.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e39])
def test_non_finite_values_are_refused(value: float) -> None:
    with pytest.raises(BadPayload, match=r"row 1, column 'c'.*send finite values"):
        to_matrix([[1, 2, 3], [1, 2, value]], COLUMNS, max_rows=10)
