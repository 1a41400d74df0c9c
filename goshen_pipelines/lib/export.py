"""ONNX export of the trained models, with a dynamic batch axis, and the parity check on them.

Exported denoiser: inputs `sample` float32 [B, 1, H, W], `timestep` int64 [B] (diffusers'
schedulers count timesteps in integers), `class_labels` int64 [B]; output `noise` [B, 1, H, W].
Exported tabular model: input `features` float32 [B, F] of raw (unscaled) features, or, for a
table, one input [B] per feature column, named as the column and typed as it (int64, float32 or
float64), cast to float32 and stacked in training order inside the graph; output `probabilities`
float32 [B, C] for classifiers, `prediction` float32 [B] for regressors.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

# diffusers' own module: its top-level names resolve to typeless placeholders for type checkers.
from diffusers.models.unets.unet_2d import UNet2DModel
from torch import nn

from goshen_pipelines.lib.classifier import TrainedTabularModel

OPSET = 17
BATCH_AXIS = "batch"
TABULAR_INPUT = "features"
# A table's feature columns in training order: each one's name and the dtype its input takes.
Columns = list[tuple[str, str]]
COLUMN_DTYPES = ("int64", "float32", "float64")


class DenoiserForExport(nn.Module):
    """A UNet2DModel with the plain positional call and tensor output the ONNX graph has."""

    def __init__(self, unet: UNet2DModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> torch.Tensor:
        noise: torch.Tensor = self.unet(
            sample, timestep, class_labels=class_labels, return_dict=False
        )[0]
        return noise


def export_onnx(
    module: nn.Module, path: str | os.PathLike[str], inputs: dict[str, np.ndarray], output: str
) -> Path:
    """Trace `module` on `inputs` (named, in call order) into a checked ONNX file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arguments = tuple(torch.from_numpy(array) for array in inputs.values())
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo=True, which needs the
        # onnxscript package; this one handles these models and needs nothing extra.
        warnings.simplefilter("ignore", DeprecationWarning)
        # diffusers' shape checks (channel asserts, a memory-layout branch on batch size) trace
        # as constants; none of them changes what the graph computes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]  # public, yet not in torch.jit.__all__
        torch.onnx.export(
            module.eval(),
            arguments,
            os.fspath(path),
            input_names=list(inputs),
            output_names=[output],
            dynamic_axes={name: {0: BATCH_AXIS} for name in [*inputs, output]},
            opset_version=OPSET,
            dynamo=False,
        )
    check_onnx(path)
    _check_input_names(path, list(inputs))
    return path


def _check_input_names(path: Path, names: list[str]) -> None:
    """The exporter renames an input whose name a value inside the graph already has."""
    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    exported = {value.name for value in graph.input}
    clashing = [name for name in names if name not in exported]
    if clashing:
        raise ValueError(
            f"input {clashing[0]!r} clashes with a name inside the exported graph; rename it"
        )


def check_onnx(path: str | os.PathLike[str]) -> None:
    """Raise `onnx.checker.ValidationError` unless the file is a valid, shape-consistent model."""
    onnx.checker.check_model(os.fspath(path), full_check=True)


def denoiser_inputs(
    image_size: int, num_classes: int, batch_size: int = 3, seed: int = 0
) -> dict[str, np.ndarray]:
    """Fixed denoiser inputs for export and parity: noise, spread timesteps, valid class labels."""
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((batch_size, 1, image_size, image_size), dtype=np.float32),
        "timestep": rng.integers(0, 1000, batch_size, dtype=np.int64),
        "class_labels": rng.integers(0, num_classes, batch_size, dtype=np.int64),
    }


def tabular_inputs(
    features: np.ndarray, batch_size: int = 3, columns: Columns | None = None
) -> dict[str, np.ndarray]:
    """The first rows of a real feature matrix, so parity is checked where the model is used:
    the matrix itself, or with `columns` one array per feature column of its dtype."""
    rows = features[:batch_size]
    if columns is None:
        return {TABULAR_INPUT: np.ascontiguousarray(rows, dtype=np.float32)}
    return {
        name: np.ascontiguousarray(rows[:, index], dtype=dtype)
        for index, (name, dtype) in enumerate(columns)
    }


def feature_range(features: np.ndarray) -> list[float]:
    """[min, max] over every training feature: the input range a served model publishes."""
    return [float(np.min(features)), float(np.max(features))]


def input_ranges(features: np.ndarray, columns: Columns | None = None) -> dict[str, list[float]]:
    """Each input's [min, max] over the training features, by input name (MLmodel metadata
    `input_ranges`): one range for the matrix, or with `columns` one per feature column."""
    if columns is None:
        return {TABULAR_INPUT: feature_range(features)}
    return {name: feature_range(features[:, index]) for index, (name, _) in enumerate(columns)}


def export_denoiser(unet: UNet2DModel, path: str | os.PathLike[str], num_classes: int) -> Path:
    """Export a trained UNet2DModel as the denoiser graph described in this module's docstring."""
    size = unet.config["sample_size"]
    return export_onnx(DenoiserForExport(unet), path, denoiser_inputs(size, num_classes), "noise")


def export_tabular_model(
    model: TrainedTabularModel,
    path: str | os.PathLike[str],
    features: np.ndarray,
    columns: Columns | None = None,
) -> Path:
    """Export a trained classifier or regressor; `features` are real rows to trace with, and
    `columns` (a table's, in training order) give it one input per column instead of `features`."""
    output = "probabilities" if model.task == "classification" else "prediction"
    if columns is not None:
        _check_columns(columns, model.num_features)
    module = model.export_module(per_column=columns is not None)
    return export_onnx(module, path, tabular_inputs(features, columns=columns), output)


def _check_columns(columns: Columns, num_features: int) -> None:
    names = [name for name, _ in columns]
    if len(names) != num_features:
        raise ValueError(f"the model takes {num_features} features but got {len(names)} columns")
    if "" in names:
        raise ValueError("a feature column has an empty name; name it")
    unsupported = {dtype for _, dtype in columns} - set(COLUMN_DTYPES)
    if unsupported:
        raise ValueError(f"column dtypes must be one of {COLUMN_DTYPES}, not {sorted(unsupported)}")


def parity(
    module: nn.Module, onnx_path: str | os.PathLike[str], inputs: dict[str, np.ndarray]
) -> float:
    """Max absolute difference between `module` in PyTorch and its ONNX file in ONNX Runtime."""
    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, inputs)
    with torch.inference_mode():
        torch_out = module.eval()(*(torch.from_numpy(array) for array in inputs.values()))
    return float(np.abs(torch_out.numpy() - onnx_out).max())
