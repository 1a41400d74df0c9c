"""A request's JSON inputs decoded into arrays of each input's dtype and shape, or refused."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from goshen.errors import InvalidInputError
from goshen.runtimes.onnx.signature import TensorSpec


def to_array(value: Any, spec: TensorSpec, max_rows: int, allow_nan: bool = False) -> np.ndarray:
    """One input's nested list as an array of its dtype and shape, or InvalidInputError."""
    field_name = f"inputs.{spec.name}"
    batched = spec.batched
    # Counted before converting, so an oversized request costs no conversion.
    if batched and isinstance(value, list):
        _check_row_count(len(value), max_rows, field_name)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise _invalid(
            field_name,
            f"is not a regular nested list (rows of unequal length?): send an {spec.describe()}",
        ) from exc
    if batched and array.ndim >= 1 and array.shape[0] == 0:
        raise _invalid(field_name, f"has no rows; send at least one row of an {spec.describe()}")
    _check_shape(array, spec)
    if batched:
        _check_row_count(len(array), max_rows, field_name)
    cast = _plain_floats(array, spec.dtype)
    if cast is not None:
        return cast
    return _cast(array, spec, allow_nan)


def _check_row_count(rows: int, max_rows: int, field_name: str) -> None:
    if rows > max_rows:
        raise _invalid(
            field_name,
            f"has {rows} rows, over the limit of {max_rows} per request; send at most "
            f"{max_rows} rows per request",
        )


def _check_shape(array: np.ndarray, spec: TensorSpec) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        hint = ""
        if spec.batched and array.ndim == len(spec.shape) - 1:
            hint = " (wrap a single row in a list)"
        raise _invalid(
            f"inputs.{spec.name}", f"has shape {_shape(array)}; send an {spec.describe()}{hint}"
        )
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and array.shape[axis] != dim:
            raise _invalid(
                f"inputs.{spec.name}",
                f"has shape {_shape(array)}, but dimension {axis} must be {dim}: "
                f"send an {spec.describe()}",
            )


def _shape(array: np.ndarray) -> str:
    return f"[{', '.join(str(size) for size in array.shape)}]"


# Float dtypes the fast path casts to, each with the largest sum of squares of float64 values
# that proves every value casts to a finite number of that dtype: the square of half its
# largest value, so that rounding in the sum cannot let a value past the largest one.
_SQUARES_PROVING_FINITE = {
    "float16": (float(np.finfo(np.float16).max) / 2) ** 2,
    "float32": (float(np.finfo(np.float32).max) / 2) ** 2,
    # For float64 itself, any finite sum will do.
    "float64": sys.float_info.max,
}
# Float dtypes whose range spans every 64-bit integer, so integers cast to them without a check.
_SPAN_64_BIT_INTEGERS = {"float32", "float64"}
# Past this many values, BLAS may run the dot product on its thread pool, which costs
# milliseconds on a busy host; arrays that large spend their time converting the lists anyway.
_FAST_PATH_MAX_SIZE = 8192


def _plain_floats(array: np.ndarray, dtype: str) -> np.ndarray | None:
    """`array` as float `dtype` when one pass proves no rule can refuse it, else None.

    /predict's common request is a few rows of finite numbers for a float input: this answers
    it without the floating-point error state and the checks `_cast` makes, each a call that
    costs more than the cast itself at this size. Anything else (NaN, infinity, values near or
    past the dtype's range, booleans, text, nulls) is left to `_cast`, which accepts or refuses
    it with its own messages."""
    squares_limit = _SQUARES_PROVING_FINITE.get(dtype)
    if squares_limit is None or array.size > _FAST_PATH_MAX_SIZE:
        return None
    kind = array.dtype.kind
    if kind == "f":
        # NaN or infinity makes the sum of squares NaN or infinite, and so fail the comparison.
        if np.vdot(array, array) <= squares_limit:
            return array.astype(dtype, copy=False)
        return None
    if kind in "iu" and dtype in _SPAN_64_BIT_INTEGERS:
        return array.astype(dtype)
    return None


def _cast(array: np.ndarray, spec: TensorSpec, allow_nan: bool) -> np.ndarray:
    """`array` as `spec.dtype`, refusing values that type cannot hold."""
    target = np.dtype(spec.dtype)
    field_name = f"inputs.{spec.name}"
    if target.kind == "b":
        if array.dtype.kind != "b":
            raise _invalid(field_name, "must hold only true or false")
        return array
    if array.dtype == object:
        array = _from_objects(array, spec, allow_nan)
    if array.dtype.kind not in "iuf":
        what = "true or false" if array.dtype.kind == "b" else "text"
        raise _invalid(field_name, f"must hold only numbers ({spec.dtype}), not {what}")
    if target.kind in "iu":
        return _as_integers(array, target, field_name)
    return _as_floats(array, target, field_name, allow_nan)


def _from_objects(array: np.ndarray, spec: TensorSpec, allow_nan: bool) -> np.ndarray:
    """A float64 array from numpy's object arrays: numbers mixed with nulls, or huge integers."""
    field_name = f"inputs.{spec.name}"
    items = array.ravel().tolist()
    if not all(item is None or _is_number(item) for item in items):
        raise _invalid(
            field_name, f"must hold only numbers ({spec.dtype}), not text, objects or true/false"
        )
    floats = np.dtype(spec.dtype).kind == "f"
    if not (allow_nan and floats) and any(item is None for item in items):
        raise _invalid(
            field_name, "must hold numbers, not null (this model takes no missing values)"
        )
    if not floats:
        bounds = np.iinfo(spec.dtype)
        raise _invalid(
            field_name, f"must hold integers from {bounds.min} to {bounds.max} ({spec.dtype})"
        )
    values = [math.nan if item is None else float(item) for item in items]
    return np.array(values, dtype=np.float64).reshape(array.shape)


def _is_number(item: object) -> bool:
    return isinstance(item, int | float) and not isinstance(item, bool)


def _as_integers(array: np.ndarray, target: np.dtype, field_name: str) -> np.ndarray:
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise _invalid(field_name, f"must hold only integers ({target}), not NaN or infinity")
        # JSON has one number type: 3.0 is the integer 3, as JSON Schema's "integer" reads it.
        if (array != np.round(array)).any():
            raise _invalid(
                field_name, f"must hold only integers ({target}); found fractional numbers"
            )
    bounds = np.iinfo(target)
    if array.size and (array.min() < bounds.min or array.max() > bounds.max):
        raise _invalid(
            field_name, f"must hold integers from {bounds.min} to {bounds.max} ({target})"
        )
    return array.astype(target)


def _as_floats(array: np.ndarray, target: np.dtype, field_name: str, allow_nan: bool) -> np.ndarray:
    with np.errstate(over="ignore"):
        cast = array.astype(target, copy=False)
    if np.isfinite(cast).all():  # the common case, in one pass: nothing below can refuse it
        return cast
    if array.dtype.kind == "f":
        if np.isinf(array).any():
            raise _invalid(field_name, "must hold finite numbers, not infinity")
        if not allow_nan and np.isnan(array).any():
            raise _invalid(
                field_name, "must hold numbers, not NaN (this model takes no missing values)"
            )
    if np.isinf(cast).any():
        limit = np.finfo(target).max
        raise _invalid(field_name, f"holds numbers beyond {target}'s range (±{limit:.3g})")
    return cast


def _invalid(field_name: str, text: str) -> InvalidInputError:
    """A refusal of one input; the message names it, since it is also shown on its own."""
    return InvalidInputError(f"{field_name} {text}", field=field_name)
