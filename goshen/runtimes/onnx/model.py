"""A loaded ONNX model: its signature, MLmodel metadata and session, run on checked inputs."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import yaml

from goshen.errors import InvalidInputError
from goshen.runtimes.devices import Device, cpu_device
from goshen.runtimes.onnx.answers import render_json
from goshen.runtimes.onnx.decoding import to_array
from goshen.runtimes.onnx.schema import public_schema
from goshen.runtimes.onnx.session import predict_session, session_device
from goshen.runtimes.onnx.signature import ANY_SIZE, TensorSpec, batchable, graph_signature

PROBABILITIES = "probabilities"


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
        return cls(inputs, outputs, session, task, classes, nan_inputs, session_device(session))

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

    @functools.cached_property
    def _has_rows(self) -> bool:
        """Whether every input's first dim is symbolic: rows, which must agree across inputs
        (asked twice per request: kept)."""
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
                if rows:
                    key = ""
                elif isinstance(dim, str) and dim != ANY_SIZE:
                    key = dim
                else:
                    continue
                size = feeds[spec.name].shape[axis]
                first_size, first_name = seen.setdefault(key, (size, spec.name))
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
        # A finite sum proves every value finite (NaN and infinity spread); float32 values summed
        # as float64 cannot overflow, so the sum warns of nothing.
        if probabilities.dtype.itemsize <= 4 and math.isfinite(probabilities.sum(dtype=np.float64)):
            return [names[index] if index < len(names) else None for index in best]
        finite = np.isfinite(probabilities).all(axis=1).tolist()
        return [
            names[index] if ok and index < len(names) else None
            for index, ok in zip(best, finite, strict=True)
        ]


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
