"""The built-in digits graph as `goshen train digits` runs it, with tiny settings.

MLflow is a real tracking server on loopback; the resources are the code location's own,
configured through GOSHEN_* settings; the run lands on a Dagster instance under GOSHEN_HOME.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pytest
from mlflow import MlflowClient

from goshen import registry
from goshen.config import Settings
from goshen.runtimes.onnx.model import OnnxModel
from goshen_pipelines.train import run_digits_job

TINY = {
    "ops": {
        "digits_classifier": {"config": {"epochs": 3}},
        "digits_diffusion": {"config": {"epochs": 1, "batch_size": 256}},
        "digits_diffusion_onnx": {"config": {"samples_per_class": 2}},
    }
}


@pytest.fixture
def settings(tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("GOSHEN_HOME", str(tmp_path))
    monkeypatch.setenv("GOSHEN_MLFLOW_TRACKING_URI", mlflow_server)
    yield Settings(_env_file=None)
    mlflow.set_tracking_uri("")
    mlflow.set_registry_uri("")


def _materialization(result: dg.ExecuteInProcessResult, asset: str) -> dg.AssetMaterialization:
    (event,) = result.asset_materializations_for_node(asset)
    return event


def test_the_digits_graph_trains_checks_registers_and_promotes(
    settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = run_digits_job(settings, TINY)
    assert result.success
    progress = capsys.readouterr().out
    assert "digits_diffusion" in progress and "epoch 1/1 " in progress
    assert "check onnx_parity passed" in progress

    dataset = _materialization(result, "digits_dataset").metadata
    assert dataset["rows"].value == 1797
    assert dataset["classes"].value == [str(d) for d in range(10)]
    assert dataset["label_balance"].value > 0.9
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "not_empty": True,
        "schema": True,
        "label_balance": True,
        "onnx_parity": True,
    }

    diffusion = _materialization(result, "digits_diffusion").metadata
    assert diffusion["samples"].value.startswith("![generated samples](data:image/png;base64,")
    assert "/#/experiments/" in diffusion["mlflow_run"].value
    run = mlflow.get_run(diffusion["mlflow_run_id"].value)
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.tags["dataset_id"] == "digits"
    assert "loss" in run.data.metrics and "class_match" in run.data.metrics

    client = MlflowClient(settings.resolved_mlflow_tracking_uri)
    for name, asset in [
        ("digits-classifier", "digits_classifier_onnx"),
        ("digits-diffusion", "digits_diffusion_onnx"),
    ]:
        registered = _materialization(result, asset).metadata
        live = registry.version_by_alias(client, name, registry.PRODUCTION)
        assert str(live.version) == registered["version"].value
        assert live.tags[registry.CHECKS_TAG] == "true"
        assert float(live.tags[registry.PARITY_TAG]) <= 1e-4
        assert (
            live.run_id
            == _materialization(result, asset.removesuffix("_onnx")).metadata["mlflow_run_id"].value
        )
        assert registry.load_onnx(name).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    promoted = _materialization(result, "digits_diffusion_production").metadata
    assert promoted["live_model_uri"].value == "models:/digits-diffusion@production"

    # /predict publishes the classifier's input range: its training pixels span [0, 1].
    folder = registry.download_model("digits-classifier", destination=tmp_path / "classifier")
    schema = OnnxModel.from_folder(folder).public_schema()
    assert schema["inputs"][0]["value_range"] == [0.0, 1.0]
    assert schema["example"]["inputs"]["features"] == [[0.5] * 64]
    assert (schema["task"], schema["classes"]) == ("classification", [str(d) for d in range(10)])
