"""An ONNX model as POST /v1/models/{name}/predict serves it: signature, input checks, answers.

Requests use MLflow's tensor input format: `{"inputs": {"<input name>": <nested list>}}`, or a
bare nested list for a model with one input. Answers are `{"outputs": {"<name>": <nested list>}}`;
classifiers add `labels` (the class name of each row) and `probabilities` (per class, per row).
JSON has no NaN or infinity, so an output value that is not finite is answered as null.

A registered model's MLmodel `metadata` may carry `task` ("classification" | "regression"),
`classes` (class names by output index), `input_ranges` ({input: [min, max]}, published, not
enforced) and `nan_inputs` ([input, ...]: inputs that take NaN or null as a missing value).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import yaml

from goshen.errors import InvalidInputError
from goshen.runtimes.devices import Device, cpu_device, detect_device

# An unnamed dynamic dimension (neither a size nor a name in the graph).
ANY_SIZE = "?"
PROBABILITIES = "probabilities"
# Element types the predict API can carry in JSON, by ONNX type.
DTYPES = {
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
        return bool(self.shape) and isinstance(self.shape[0], str)

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


def predict_session(
    path: str | os.PathLike[str], intra_op_threads: int = 1
) -> ort.InferenceSession:
    """A session for /predict: CUDA when the installed runtime offers it, else the CPU.

    One intra-op thread by default: on the digits classifier it is the fastest at every batch
    size from 1 to 64, alone and with two callers at once (BENCHMARKS.md, bench/onnx_predict.py);
    small graphs lose more to waking threads than they gain from splitting operators.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Threads beyond the first sleep between calls instead of spinning on the API's cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Only ONNX protobuf: ONNX Runtime would otherwise also take its own .ort format.
    options.add_session_config_entry("session.load_model_format", "ONNX")
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)


@dataclass
class OnnxModel:
    """A loaded ONNX model: its signature, what its MLmodel metadata says, and its session."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    session: ort.InferenceSession = field(repr=False)
    task: str | None = None
    classes: list[str] | None = None
    nan_inputs: frozenset[str] = frozenset()
    device: Device = field(default_factory=cpu_device)

    @property
    def batchable(self) -> bool:
        """Whether requests may be merged: every input and output has a symbolic first dim."""
        return batchable(self.inputs, self.outputs)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        metadata: dict[str, Any] | None = None,
        intra_op_threads: int = 1,
    ) -> OnnxModel:
        """Load a bare .onnx (and its external data beside it); `metadata` as in MLmodel."""
        metadata = metadata or {}
        inputs, outputs = graph_signature(onnx.load(os.fspath(path), load_external_data=False))
        inputs = _with_ranges(inputs, metadata.get("input_ranges") or {})
        # Regressors are published with an empty class list.
        task, classes = metadata.get("task"), metadata.get("classes") or None
        if task not in (None, "classification", "regression"):
            raise ValueError(f"metadata task {task!r} is neither classification nor regression")
        if task == "classification":
            outputs = _with_probability_range(outputs, classes)
        nan_inputs = frozenset(metadata.get("nan_inputs") or ())
        _check_names(nan_inputs, inputs, "nan_inputs")
        session = predict_session(path, intra_op_threads)
        classes = [str(name) for name in classes] if classes is not None else None
        return cls(inputs, outputs, session, task, classes, nan_inputs, _device(session))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], intra_op_threads: int = 1) -> OnnxModel:
        """Load an MLflow ONNX model folder (MLmodel + model.onnx) as the registry hands it out."""
        folder = Path(folder)
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text()) or {}
        name = mlmodel.get("flavors", {}).get("onnx", {}).get("onnx_model", "model.onnx")
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise ValueError(f"{folder}/MLmodel names a model file outside its folder: {name}")
        return cls.from_file(path, mlmodel.get("metadata") or {}, intra_op_threads)

    def check_inputs(self, payload: Any, *, max_rows: int) -> dict[str, np.ndarray]:
        """The request's `inputs` as arrays of each input's dtype; InvalidInputError naming the
        field (`inputs.<name>` or `inputs`) and what to send instead when they do not fit."""
        named = self._by_name(payload)
        feeds = {
            spec.name: to_array(named[spec.name], spec, max_rows, spec.name in self.nan_inputs)
            for spec in self.inputs
        }
        self._check_dims_agree(feeds)
        return feeds

    def rows(self, feeds: dict[str, np.ndarray]) -> int:
        """How many rows a request holds: its batch size, or 1 for a model without a batch axis."""
        return len(feeds[self.inputs[0].name]) if self._has_rows else 1

    @property
    def _has_rows(self) -> bool:
        """Whether every input's first dim is symbolic: rows, which must agree across inputs."""
        return all(spec.batched for spec in self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output for checked `feeds`; safe to call from several threads at once."""
        names = [spec.name for spec in self.outputs]
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def present(self, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """The answer: every output, plus labels and probabilities for classifiers; arrays stay
        arrays (`render_json` writes them, values that are not finite as null)."""
        answer: dict[str, Any] = {
            "outputs": {spec.name: outputs[spec.name] for spec in self.outputs}
        }
        probabilities = self._probability_output()
        if probabilities is not None and outputs[probabilities].ndim == 2:
            answer["labels"] = self._labels(outputs[probabilities])
            answer["probabilities"] = outputs[probabilities]
        return answer

    def answer(self, outputs: dict[str, np.ndarray]) -> bytes:
        """`present(outputs)` as the JSON bytes of the answer."""
        return render_json(self.present(outputs))

    def public_schema(self) -> dict[str, Any]:
        """What GET /v1/models/{name} publishes: signature, task, classes and an example body."""
        return public_schema(self.inputs, self.outputs, task=self.task, classes=self.classes)

    def _by_name(self, payload: Any) -> dict[str, Any]:
        names = [spec.name for spec in self.inputs]
        if isinstance(payload, list):
            if len(names) == 1:
                return {names[0]: payload}
            raise InvalidInputError(
                f"this model takes {len(names)} inputs ({', '.join(names)}); send an object "
                "with one nested list per input name, not a bare list",
                field="inputs",
            )
        if not isinstance(payload, dict):
            raise InvalidInputError(
                "send an object {input name: nested list}, or a nested list for a model "
                "with one input",
                field="inputs",
            )
        for name in payload:
            if name not in names:
                raise InvalidInputError(
                    f"unknown input {name!r}; this model takes {', '.join(names)}",
                    field=f"inputs.{name}",
                )
        for spec in self.inputs:
            if spec.name not in payload:
                raise InvalidInputError(
                    f"missing input {spec.name!r}: send an {spec.describe()}",
                    field=f"inputs.{spec.name}",
                )
        return payload

    def _check_dims_agree(self, feeds: dict[str, np.ndarray]) -> None:
        """Rows agree across inputs (batchable models), and so do sizes of same-named dims."""
        seen: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            for axis, dim in enumerate(spec.shape or ()):
                # The batch axis agrees whatever each input calls it, even unnamed.
                rows = axis == 0 and self._has_rows
                if not rows and (not isinstance(dim, str) or dim == ANY_SIZE):
                    continue
                size = feeds[spec.name].shape[axis]
                first_size, first_name = seen.setdefault("" if rows else dim, (size, spec.name))
                if size == first_size:
                    continue
                what = "rows" if rows else f"along dimension {dim!r}"
                raise InvalidInputError(
                    f"inputs.{spec.name} has {size} {what} but inputs.{first_name} has "
                    f"{first_size}; send the same number for every input",
                    field=f"inputs.{spec.name}",
                )

    def _probability_output(self) -> str | None:
        if self.task != "classification":
            return None
        return _find_probabilities(self.outputs)

    def _labels(self, probabilities: np.ndarray) -> list[str | None]:
        """Each row's most probable class; null for a row whose probabilities are not finite."""
        width = probabilities.shape[1]
        if width == 0:
            return [None] * len(probabilities)
        names = self.classes or [str(index) for index in range(width)]
        best = probabilities.argmax(axis=1).tolist()
        finite = np.isfinite(probabilities).all(axis=1).tolist()
        return [
            names[index] if ok and index < len(names) else None
            for index, ok in zip(best, finite, strict=True)
        ]


def batchable(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
    """Whether a signature lets requests be merged: every tensor's first dim is the same
    symbolic one, by name (torch.onnx's `dynamic_axes={...: {0: "batch"}}`) or unnamed in all of
    them (skl2onnx's None). An output whose first dim has another name (`Reshape` to -1, a count
    of detections) is not one row per input row. The batcher still checks each merged call."""
    tensors = [*inputs, *outputs]
    if not inputs or not all(spec.batched for spec in tensors):
        return False
    return len({spec.shape[0] for spec in tensors}) == 1  # type: ignore[index]


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


def to_array(value: Any, spec: TensorSpec, max_rows: int, allow_nan: bool = False) -> np.ndarray:
    """One input's nested list as an array of its dtype and shape, or InvalidInputError."""
    field_name = f"inputs.{spec.name}"
    # Counted before converting, so an oversized request costs no conversion.
    if spec.batched and isinstance(value, list):
        _check_row_count(len(value), max_rows, field_name)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise _invalid(
            field_name,
            f"is not a regular nested list (rows of unequal length?): send an {spec.describe()}",
        ) from exc
    if spec.batched and array.ndim >= 1 and array.shape[0] == 0:
        raise _invalid(field_name, f"has no rows; send at least one row of an {spec.describe()}")
    _check_shape(array, spec)
    if spec.batched:
        _check_row_count(len(array), max_rows, field_name)
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
    got = f"[{', '.join(str(size) for size in array.shape)}]"
    if array.ndim != len(spec.shape):
        hint = ""
        if spec.batched and array.ndim == len(spec.shape) - 1:
            hint = " (wrap a single row in a list)"
        raise _invalid(f"inputs.{spec.name}", f"has shape {got}; send an {spec.describe()}{hint}")
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and array.shape[axis] != dim:
            raise _invalid(
                f"inputs.{spec.name}",
                f"has shape {got}, but dimension {axis} must be {dim}: send an {spec.describe()}",
            )


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


def render_json(value: Any) -> bytes:
    """JSON for answers holding numpy arrays: floats written shortest-exact for their own type
    (a float32 as 0.45561102, not 0.4556110203266144), and NaN or infinity as null."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback)


def _fallback(value: Any) -> Any:
    # orjson writes C-contiguous arrays of numeric types itself; others go through lists (whose
    # NaN and infinity it also writes as null).
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _with_ranges(inputs: list[TensorSpec], ranges: dict[str, Any]) -> list[TensorSpec]:
    _check_names(ranges, inputs, "input_ranges")
    return [
        TensorSpec(spec.name, spec.dtype, spec.shape, _range(ranges[spec.name]))
        if spec.name in ranges
        else spec
        for spec in inputs
    ]


def _range(value: Any) -> tuple[float, float]:
    low, high = (float(bound) for bound in value)
    if not low <= high:
        raise ValueError(f"metadata input range {value!r} is not [min, max]")
    return low, high


def _check_names(names: Any, inputs: list[TensorSpec], key: str) -> None:
    unknown = set(names) - {spec.name for spec in inputs}
    if unknown:
        raise ValueError(f"MLmodel metadata {key} names {sorted(unknown)}, which are not inputs")


def _find_probabilities(outputs: list[TensorSpec]) -> str | None:
    """The classifier's per-class output: `probabilities`, else its only float [B, C] output."""
    if any(spec.name == PROBABILITIES for spec in outputs):
        return PROBABILITIES
    candidates = [
        spec.name
        for spec in outputs
        if spec.dtype.startswith("float") and (spec.shape is None or len(spec.shape) == 2)
    ]
    return candidates[0] if len(candidates) == 1 else None


def _with_probability_range(
    outputs: list[TensorSpec], classes: list[Any] | None
) -> list[TensorSpec]:
    """Outputs with [0, 1] on the probabilities; ValueError when a classifier has none."""
    name = _find_probabilities(outputs)
    if name is None:
        raise ValueError(
            "metadata says classification, but no output is `probabilities` [batch, classes]"
        )
    spec = next(spec for spec in outputs if spec.name == name)
    width = spec.shape[-1] if spec.shape else None
    if classes is not None and isinstance(width, int) and width != len(classes):
        raise ValueError(f"metadata names {len(classes)} classes, but {name} has {width}")
    ranged = TensorSpec(spec.name, spec.dtype, spec.shape, (0.0, 1.0))
    return [ranged if other.name == name else other for other in outputs]


def _device(session: ort.InferenceSession) -> Device:
    """Where the session computes: ONNX Runtime falls back to the CPU when CUDA fails to load."""
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return cpu_device()
    found = detect_device()
    # PyTorch may be a CPU build beside onnxruntime-gpu; the session is on CUDA all the same.
    return found if found.kind == "cuda" else Device("cuda", "cuda:0", None)
