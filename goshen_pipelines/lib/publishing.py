"""From a trained PyTorch model to a registered, checked ONNX version in MLflow.

The parity check runs on fixed inputs at two batch sizes (the export has a dynamic batch axis);
its result is tagged on the version, and promotion refuses versions whose checks failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx

# diffusers' own module: its top-level names resolve to typeless placeholders for type checkers.
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from goshen import registry
from goshen.runtimes.diffusion import OnnxDenoiser
from goshen_pipelines.lib import export
from goshen_pipelines.lib.classifier import TrainedTabularModel
from goshen_pipelines.lib.diffusion import TrainedDiffusion
from goshen_pipelines.lib.quality import ClassMatch, class_match_rate

PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 3)


@dataclass(frozen=True)
class Published:
    version: registry.RegisteredVersion
    parity_max_abs_diff: float
    metric_name: str
    metric: float

    @property
    def parity_passed(self) -> bool:
        return self.parity_max_abs_diff <= PARITY_TOLERANCE


def max_parity(
    module: nn.Module, path: Path, inputs: Callable[[int], dict[str, np.ndarray]]
) -> float:
    """The largest PyTorch-vs-ONNX Runtime difference over the checked batch sizes."""
    return max(export.parity(module, path, inputs(size)) for size in PARITY_BATCH_SIZES)


def torch_weights(unet: ModelMixin, workdir: Path) -> list[Path]:
    """The UNet as diffusers saves it (config.json and safetensors), to ship beside the ONNX."""
    folder = workdir / "unet"
    unet.save_pretrained(folder, safe_serialization=True)
    return sorted(path for path in folder.iterdir() if path.is_file())


def export_denoiser(trained: TrainedDiffusion, workdir: Path) -> tuple[Path, float]:
    spec = trained.spec
    path = export.export_denoiser(trained.unet, workdir / "model.onnx", spec.num_classes)
    module = export.DenoiserForExport(trained.unet)
    diff = max_parity(
        module,
        path,
        lambda size: export.denoiser_inputs(spec.image_size, spec.num_classes, batch_size=size),
    )
    return path, diff


def export_tabular(
    trained: TrainedTabularModel,
    features: np.ndarray,
    workdir: Path,
    columns: export.Columns | None = None,
) -> tuple[Path, float]:
    """The ONNX export (one input per column of `columns` when given) and its parity."""
    path = export.export_tabular_model(trained, workdir / "model.onnx", features, columns)
    diff = max_parity(
        trained.export_module(per_column=columns is not None),
        path,
        lambda size: export.tabular_inputs(features, size, columns),
    )
    return path, diff


def generator_quality(
    onnx_path: Path,
    trained: TrainedDiffusion,
    predict: Callable[[np.ndarray], np.ndarray],
    per_class: int,
) -> ClassMatch:
    """The share of digits the classifier reads as the digit asked for, sampled from the ONNX
    export: the graph that will be served, not the PyTorch module it came from."""
    return class_match_rate(OnnxDenoiser.from_path(onnx_path), trained.spec, predict, per_class)


def register(
    onnx_path: Path,
    registered_name: str,
    *,
    run_id: str,
    parity_max_abs_diff: float,
    metric_name: str,
    metric: float,
    metadata: dict[str, Any],
    tags: dict[str, str],
    extra_files: list[Path] | None = None,
) -> Published:
    """Log the ONNX file into the training's MLflow run and register it as a new version."""
    passed = parity_max_abs_diff <= PARITY_TOLERANCE
    version_tags = {
        registry.METRIC_TAG: repr(metric),
        registry.METRIC_NAME_TAG: metric_name,
        registry.PARITY_TAG: repr(parity_max_abs_diff),
        registry.CHECKS_TAG: str(passed).lower(),
        **tags,
    }
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({"onnx_parity_max_abs_diff": parity_max_abs_diff, metric_name: metric})
        version = registry.log_onnx_model(
            onnx.load(str(onnx_path)),
            registered_name,
            metadata=metadata,
            tags=version_tags,
            extra_files=extra_files,
        )
    return Published(version, parity_max_abs_diff, metric_name, metric)
