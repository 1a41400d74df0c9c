"""The MLflow registry: versions, tags, promotion by metric, rollback alias, loading name@alias.

Runs against a real MLflow registry on a SQLite backend store in a temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper

from goshen import registry


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("test", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield MlflowClient(uri, uri)
    mlflow.set_tracking_uri("")
    mlflow.set_registry_uri("")


def _identity_model(scale: float) -> onnx.ModelProto:
    node = helper.make_node("Mul", ["x", "s"], ["y"])
    graph = helper.make_graph(
        [node],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _register(metric: float, checks: bool, scale: float = 1.0) -> registry.RegisteredVersion:
    with mlflow.start_run():
        return registry.log_onnx_model(
            _identity_model(scale),
            "scaler",
            metadata={"kind": "onnx"},
            tags={registry.METRIC_TAG: str(metric), registry.CHECKS_TAG: str(checks).lower()},
        )


def test_promotion_moves_aliases_only_for_better_checked_versions(tracking: MlflowClient) -> None:
    first = _register(0.90, True)
    assert first.version == "1" and first.model_uri.startswith("models:/")
    decision = registry.promote(tracking, "scaler", first.version)
    assert decision.promoted and decision.previous_version is None

    worse = _register(0.80, True)
    assert not registry.promote(tracking, "scaler", worse.version).promoted
    unchecked = _register(0.99, False)
    decision = registry.promote(tracking, "scaler", unchecked.version)
    assert not decision.promoted and "checks did not pass" in decision.reason
    assert str(registry.version_by_alias(tracking, "scaler", "production").version) == "1"

    better = _register(0.95, True, scale=2.0)
    decision = registry.promote(tracking, "scaler", better.version)
    assert decision.promoted and decision.previous_version == "1"
    assert (
        str(registry.version_by_alias(tracking, "scaler", "production").version) == better.version
    )
    assert str(registry.version_by_alias(tracking, "scaler", "previous").version) == "1"
    live = registry.load_onnx("scaler")
    assert onnx.numpy_helper.to_array(live.graph.initializer[0]).tolist() == [2.0]


def test_lower_is_better_metrics() -> None:
    assert registry.decide_promotion(0.5, 0.6, checks_passed=True, higher_is_better=False)[0]
    assert not registry.decide_promotion(0.7, 0.6, checks_passed=True, higher_is_better=False)[0]
    assert registry.decide_promotion(0.6, 0.6, checks_passed=True, higher_is_better=True)[0]


def test_missing_models_are_not_found(tracking: MlflowClient) -> None:
    assert registry.version_by_alias(tracking, "nothing", "production") is None
    with pytest.raises(registry.NotFoundError, match="no model nothing@production"):
        registry.load_onnx("nothing")
