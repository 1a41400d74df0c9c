"""Decoding one input's JSON value: what is accepted, as what, and each refusal's exact words.

Most requests take a fast path (a few rows of finite numbers for a float input); these tests
pin that it gives the same arrays as the careful path and hands it everything unusual."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from goshen.errors import InvalidInputError
from goshen.runtimes.onnx.decoding import to_array
from goshen.runtimes.onnx.signature import TensorSpec

# A cast that overflowed without a check would warn; here it fails the test instead.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

X = TensorSpec("x", "float32", ("batch", 3))
FLOAT32_MAX = float(np.finfo(np.float32).max)
NOT_NUMBERS = "inputs.x must hold only numbers (float32), not"
NO_NAN = "inputs.x must hold numbers, not NaN (this model takes no missing values)"
NO_INFINITY = "inputs.x must hold finite numbers, not infinity"
BEYOND_FLOAT32 = "inputs.x holds numbers beyond float32's range (±3.4e+38)"
# Past the midpoint between float32's largest value and 2**128: rounds to infinity.
PAST_FLOAT32 = 3.40282357e38


def _refusal(value: Any, spec: TensorSpec = X, allow_nan: bool = False) -> str:
    with pytest.raises(InvalidInputError) as caught:
        to_array(value, spec, max_rows=10_000, allow_nan=allow_nan)
    assert caught.value.field == f"inputs.{spec.name}"
    return str(caught.value)


def test_rows_of_floats_become_float32_with_the_nearest_values() -> None:
    rows = np.random.default_rng(0).normal(scale=100, size=(64, 64)).tolist()
    spec = TensorSpec("features", "float32", ("batch", 64))
    for value in (rows[:1], rows):
        array = to_array(value, spec, max_rows=64)
        assert array.dtype == np.float32
        assert np.array_equal(array, np.array(value, dtype=np.float32))


def test_float64_inputs_keep_every_finite_value_exactly() -> None:
    # 1e200's square overflows: a value the fast path cannot vouch for but the input takes.
    value = [[0.1, 1e200, -1e300], [5e-324, -2.5, 1e-310]]
    spec = TensorSpec("x", "float64", ("batch", 3))
    array = to_array(value, spec, max_rows=4)
    assert array.dtype == np.float64
    assert array.tolist() == value
    assert _refusal([[1.0, math.inf, 2.0]], spec) == NO_INFINITY
    assert _refusal([[math.nan, 1.0, 2.0]], spec) == NO_NAN


def test_negative_zero_keeps_its_sign() -> None:
    for dtype in ("float32", "float64"):
        array = to_array([[-0.0, 0.0, 1.0]], TensorSpec("x", dtype, ("batch", 3)), max_rows=1)
        assert np.signbit(array[0]).tolist() == [True, False, False]


def test_integers_are_taken_for_float_inputs() -> None:
    array = to_array([[1, -2, 2**63]], X, max_rows=1)
    assert array.dtype == np.float32
    assert array.tolist() == [[1.0, -2.0, float(np.float32(2**63))]]
    mixed = to_array([[1, 2.5, 2**70]], X, max_rows=1)
    assert mixed.tolist() == [[1.0, 2.5, float(np.float32(2**70))]]


def test_values_up_to_float32s_largest_are_taken() -> None:
    array = to_array([[3e38, -FLOAT32_MAX, 3.4028235e38]], X, max_rows=1)
    assert array.tolist() == [[float(np.float32(3e38)), -FLOAT32_MAX, FLOAT32_MAX]]


def test_missing_values_are_nan_where_the_input_allows_them() -> None:
    array = to_array([[math.nan, 1.0, 2.0], [None, 3.0, 4.0]], X, max_rows=2, allow_nan=True)
    assert np.isnan(array[:, 0]).all()
    assert array[:, 1:].tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("value", "allow_nan", "message"),
    [
        ([[math.nan, 1.0, 2.0]], False, NO_NAN),
        (
            [[None, 1.0, 2.0]],
            False,
            "inputs.x must hold numbers, not null (this model takes no missing values)",
        ),
        ([[math.inf, 1.0, 2.0]], False, NO_INFINITY),
        ([[1.0, -math.inf, 2.0]], True, NO_INFINITY),
        ([[math.nan, math.inf, 2.0]], False, NO_INFINITY),
        ([[1e39, 1.0, 2.0]], True, BEYOND_FLOAT32),
        # Values that cancel out: a check of their sum alone would miss them.
        ([[1e39, -1e39, 0.0]], False, BEYOND_FLOAT32),
        ([[PAST_FLOAT32, 1.0, 2.0]], False, BEYOND_FLOAT32),
        ([[True, False, True]], False, f"{NOT_NUMBERS} true or false"),
        ([["1.5", "2", "3"]], False, f"{NOT_NUMBERS} text"),
        ([[1.0, "2", None]], True, f"{NOT_NUMBERS} text, objects or true/false"),
        (
            [[1.0, 2.0, 3.0], [4.0, 5.0]],
            False,
            "inputs.x is not a regular nested list (rows of unequal length?): "
            "send an array of float32 shaped [batch, 3]",
        ),
        (
            [],
            False,
            "inputs.x has no rows; send at least one row of an array of float32 shaped [batch, 3]",
        ),
        (
            [[]],
            False,
            "inputs.x has shape [1, 0], but dimension 1 must be 3: "
            "send an array of float32 shaped [batch, 3]",
        ),
        (
            [1.0, 2.0, 3.0],
            False,
            "inputs.x has shape [3]; send an array of float32 shaped [batch, 3] "
            "(wrap a single row in a list)",
        ),
    ],
)
def test_float_inputs_refuse_what_they_cannot_hold(
    value: Any, allow_nan: bool, message: str
) -> None:
    assert _refusal(value, allow_nan=allow_nan) == message


def test_integers_beyond_float16s_range_are_refused() -> None:
    spec = TensorSpec("x", "float16", ("batch", 3))
    beyond = "inputs.x holds numbers beyond float16's range (±6.55e+04)"
    assert _refusal([[70000, 1, 2]], spec) == beyond
    assert to_array([[65504, 1.5, -2]], spec, max_rows=1).tolist() == [[65504.0, 1.5, -2.0]]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (math.nan, NO_NAN),
        (math.inf, NO_INFINITY),
        (-math.inf, NO_INFINITY),
        (1e39, BEYOND_FLOAT32),
        (PAST_FLOAT32, BEYOND_FLOAT32),
    ],
)
@pytest.mark.parametrize("rows", [1, 4000])
def test_large_requests_are_checked_as_small_ones_are(bad: float, message: str, rows: int) -> None:
    """One bad value anywhere, in a request of one row or of thousands, gets the same refusal."""
    value = [[1.0, 2.0, 3.0] for _ in range(rows)]
    value[-1][-1] = bad
    assert _refusal(value) == message
