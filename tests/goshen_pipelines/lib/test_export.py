"""ONNX export with a dynamic batch axis, and parity between ONNX Runtime and PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from goshen.runtimes.diffusion import OnnxDenoiser, sample_images
from goshen_pipelines.lib import export
from goshen_pipelines.lib.classifier import ClassifierConfig, TrainedTabularModel, train_classifier
from goshen_pipelines.lib.diffusion import TrainedDiffusion
from goshen_pipelines.lib.digits import classifier_features


@pytest.fixture(scope="module")
def denoiser_path(
    tiny_diffusion: TrainedDiffusion, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return export.export_denoiser(
        tiny_diffusion.unet, tmp_path_factory.mktemp("onnx") / "unet.onnx", num_classes=10
    )


def test_denoiser_graph_has_the_documented_inputs(denoiser_path: Path) -> None:
    graph = onnx.load(denoiser_path).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert list(inputs) == ["sample", "timestep", "class_labels"]
    assert inputs["sample"].elem_type == onnx.TensorProto.FLOAT
    assert inputs["timestep"].elem_type == onnx.TensorProto.INT64
    assert inputs["class_labels"].elem_type == onnx.TensorProto.INT64
    assert [o.name for o in graph.output] == ["noise"]
    assert inputs["sample"].shape.dim[0].dim_param == export.BATCH_AXIS


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_denoiser_parity_at_any_batch_size(
    tiny_diffusion: TrainedDiffusion, denoiser_path: Path, batch_size: int
) -> None:
    inputs = export.denoiser_inputs(8, 10, batch_size=batch_size, seed=batch_size)
    module = export.DenoiserForExport(tiny_diffusion.unet)
    assert export.parity(module, denoiser_path, inputs) <= 1e-4


def test_onnx_and_torch_denoisers_sample_the_same_images(
    tiny_diffusion: TrainedDiffusion, denoiser_path: Path
) -> None:
    labels = [0, 5, 9]
    from_torch = sample_images(tiny_diffusion.denoiser(), tiny_diffusion.spec, labels, seed=3)
    from_onnx = sample_images(
        OnnxDenoiser.from_path(denoiser_path), tiny_diffusion.spec, labels, seed=3
    )
    # Float rounding can tip a pixel to the neighbouring uint8 level, never further.
    assert np.abs(from_torch.astype(int) - from_onnx.astype(int)).max() <= 1


@pytest.mark.parametrize("batch_size", [1, 3])
def test_classifier_parity_and_probabilities(
    digits_classifier: TrainedTabularModel,
    digits: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    batch_size: int,
) -> None:
    features = classifier_features(digits[0])
    path = export.export_tabular_model(digits_classifier, tmp_path / "clf.onnx", features)
    inputs = export.tabular_inputs(features[10:], batch_size)
    assert export.parity(digits_classifier.export_module(), path, inputs) <= 1e-4
    graph = onnx.load(path).graph
    assert [o.name for o in graph.output] == ["probabilities"]


def test_feature_range_spans_every_feature() -> None:
    features = np.array([[0.0, 2.5], [-1.0, 5.0]], dtype=np.float32)
    assert export.feature_range(features) == [-1.0, 5.0]


def test_regressor_exports_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(100, 3)).astype(np.float32)
    model = train_classifier(
        features, features[:, 0] * 10 + 2, ClassifierConfig(task="regression", epochs=2)
    )
    path = export.export_tabular_model(model, tmp_path / "reg.onnx", features)
    assert [o.name for o in onnx.load(path).graph.output] == ["prediction"]
    for batch_size in (1, 3):
        inputs = export.tabular_inputs(features, batch_size)
        assert export.parity(model.export_module(), path, inputs) <= 1e-4


def test_check_onnx_refuses_a_broken_graph(denoiser_path: Path, tmp_path: Path) -> None:
    model = onnx.load(denoiser_path)
    model.graph.node[0].input[0] = "nothing_produces_this"
    onnx.save(model, tmp_path / "broken.onnx")
    with pytest.raises(onnx.checker.ValidationError):
        export.check_onnx(tmp_path / "broken.onnx")
