"""An ONNX graph's signature: its input and output tensors as /predict carries them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

# An unnamed dynamic dimension (neither a size nor a name in the graph).
ANY_SIZE = "?"
# Element types the predict API can carry in JSON, by ONNX type.
# By the element type code a tensor's type carries (TensorProto.DataType's values).
DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
}


class UnservableModelError(ValueError):
    """The graph has an input or output the predict API cannot carry (e.g. maps, strings)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: numpy dtype name, shape (str: a symbolic dim; None: unknown rank)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...] | None
    value_range: tuple[float, float] | None = None

    @property
    def batched(self) -> bool:
        """Whether the first dimension is symbolic: any number of rows."""
        return bool(self.shape and isinstance(self.shape[0], str))

    def public(self) -> dict[str, Any]:
        """The form GET /v1/models/{name} publishes; the batch dim and unnamed dims are null."""
        shape = None
        if self.shape is not None:
            shape = [
                None if isinstance(dim, str) and (axis == 0 or dim == ANY_SIZE) else dim
                for axis, dim in enumerate(self.shape)
            ]
        value_range = list(self.value_range) if self.value_range is not None else None
        return {"name": self.name, "dtype": self.dtype, "shape": shape, "value_range": value_range}

    def describe(self) -> str:
        """What to send, as error messages say it: `array of float32 shaped [batch, 64]`."""
        if self.shape is None:
            return f"array of {self.dtype} (any shape)"
        dims = ", ".join("any" if dim == ANY_SIZE else str(dim) for dim in self.shape)
        return f"array of {self.dtype} shaped [{dims}]"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form (the upload validator's verdict carries it)."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape) if self.shape is not None else None,
            "value_range": list(self.value_range) if self.value_range is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        """The inverse of `to_dict`."""
        shape, value_range = data["shape"], data["value_range"]
        return cls(
            data["name"],
            data["dtype"],
            tuple(shape) if shape is not None else None,
            (float(value_range[0]), float(value_range[1])) if value_range is not None else None,
        )


def graph_signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs (initializers excluded) and outputs; UnservableModelError if any
    of them is not a numeric or boolean tensor."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [_spec(value) for value in model.graph.input if value.name not in initializers]
    if not inputs:
        raise UnservableModelError("the graph has no inputs; /predict needs at least one")
    return inputs, [_spec(value) for value in model.graph.output]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    tensor = value.type.tensor_type
    if kind != "tensor_type" or tensor.elem_type not in DTYPES:
        described = onnx.helper.printable_type(value.type)
        raise UnservableModelError(
            f"{value.name!r} is {described}; /predict carries numeric and boolean tensors only "
            "(for skl2onnx classifiers, export with options={'zipmap': False})"
        )
    shape: tuple[int | str, ...] | None = None
    if tensor.HasField("shape"):
        shape = tuple(_dim(dim) for dim in tensor.shape.dim)
    return TensorSpec(value.name, DTYPES[tensor.elem_type], shape)


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or ANY_SIZE


def batchable(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
    """Whether a signature lets requests be merged: every tensor's first dim is the same
    symbolic one, by name (torch.onnx's `dynamic_axes={...: {0: "batch"}}`) or unnamed in all of
    them (skl2onnx's None). An output whose first dim has another name (`Reshape` to -1, a count
    of detections) is not one row per input row. The batcher still checks each merged call."""
    tensors = [*inputs, *outputs]
    if not inputs or not all(spec.batched for spec in tensors):
        return False
    return len({spec.shape[0] for spec in tensors if spec.shape}) == 1
