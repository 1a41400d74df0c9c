"""The schema GET /v1/models/{name} publishes for a signature, with an example request."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from goshen.runtimes.onnx.signature import TensorSpec, batchable


def public_schema(
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    task: str | None = None,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """A signature as GET /v1/models/{name} publishes it, with an example request body."""
    return {
        "inputs": [spec.public() for spec in inputs],
        "outputs": [spec.public() for spec in outputs],
        "batchable": batchable(inputs, outputs),
        "task": task,
        "classes": classes,
        "example": {"inputs": {spec.name: example_value(spec) for spec in inputs}},
    }


def example_value(spec: TensorSpec) -> Any:
    """One row of `spec` for an example request: mid-range values, else zeros (or false)."""
    dims = (1,) if spec.shape is None else spec.shape
    shape = tuple(dim if isinstance(dim, int) else 1 for dim in dims)
    value: float | bool = 0
    if spec.dtype == "bool":
        value = False
    elif spec.value_range is not None:
        low, high = spec.value_range
        value = (low + high) / 2
        if np.dtype(spec.dtype).kind in "iu":
            value = math.floor(value)
    return np.full(shape, value, dtype=spec.dtype).tolist()
