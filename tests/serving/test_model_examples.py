"""GET /v1/models/{name} publishes each ONNX model's examples as whole /predict request bodies,
and its input ranges as hints: a published example, sent as it is, is answered, through the API
and through the SDK, for every kind of model that publishes one (a classifier, table models
exported per column for classification and regression, and a customer's trained model); values
outside a published range are answered too.

Against a real MLflow registry holding tiny random-weights models, the API on TestClient and on
a real uvicorn for the SDK.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen import registry, trained_models
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model, ModelRuntime, ModelStatus, ModelVersion, Role
from goshen.runtimes.onnx.model import OnnxModel
from goshen_pipelines.lib import export, publishing
from goshen_pipelines.lib.classifier import TabularNet, TrainedTabularModel
from serving.app import create_app
from serving.catalog.views import VALUE_RANGE_HINT
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel, add_owned_classifier, deploy_classifier

COLUMNS = [("age", "int64"), ("income", "float64"), ("score", "float32")]
FEATURES = np.stack(
    [
        np.random.default_rng(0).integers(18, 80, 40),
        np.random.default_rng(1).normal(1000.0, 300.0, 40),
        np.random.default_rng(2).random(40),
    ],
    axis=1,
).astype(np.float32)


def register_table_model(tracking_uri: str, name: str, task: str) -> RegisteredModel:
    """A random-weights model over COLUMNS, exported per column as training jobs export it
    (with the ranges seen in training), registered live as `name`."""
    torch.manual_seed(0)
    mean, std = torch.from_numpy(FEATURES.mean(axis=0)), torch.from_numpy(FEATURES.std(axis=0))
    classes = ["no", "yes"] if task == "classification" else []
    scale = None if classes else (10.0, 2.0)
    net = TabularNet((8,), 0.0, mean, std, max(len(classes), 1), scale).eval()
    trained = TrainedTabularModel(net, task, len(COLUMNS), classes, {})  # type: ignore[arg-type]  # task: a Task literal
    metadata: dict[str, Any] = {
        "kind": "onnx",
        "task": task,
        "input_ranges": export.input_ranges(FEATURES, COLUMNS),
    }
    if classes:
        metadata["classes"] = classes
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("serving-tests")
    with tempfile.TemporaryDirectory() as workdir, mlflow.start_run():
        path, _ = publishing.export_tabular(trained, FEATURES, Path(workdir), COLUMNS)
        version = registry.log_onnx_model(
            onnx.load(str(path)), name, metadata=metadata, tags={registry.CHECKS_TAG: "true"}
        )
    mlflow.MlflowClient().set_registered_model_alias(name, registry.PRODUCTION, version.version)
    return RegisteredModel(name, version.version)


@pytest.fixture
def admin(make_account: Callable[..., Account]) -> Account:
    return make_account(Role.admin)


@pytest.fixture
def api(serving_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings)) as client:
        yield client


@pytest.fixture(params=["classifier", "table-classifier", "table-regressor"])
def deployed(
    request: pytest.FixtureRequest,
    api: TestClient,
    admin: Account,
    mlflow_server: str,
    register_classifier: Callable[..., RegisteredModel],
) -> str:
    """The name of a public catalog entry of each kind of ONNX model, deployed by an admin."""
    name = f"{request.param}-{secrets.token_hex(3)}"
    if request.param == "classifier":
        register_classifier(name)
    else:
        task = "classification" if request.param == "table-classifier" else "regression"
        register_table_model(mlflow_server, name, task)
    return str(deploy_classifier(api, admin.headers, name)["name"])


def _page(api: TestClient, account: Account, name: str) -> dict[str, Any]:
    answer = api.get(f"/v1/models/{name}", headers=account.headers)
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


def _assert_example_is_a_request_body(page: dict[str, Any]) -> dict[str, Any]:
    example: dict[str, Any] = page["examples"][0]
    names = sorted(spec["name"] for spec in page["input_schema"]["inputs"])
    assert list(example) == ["inputs"] and sorted(example["inputs"]) == names, example
    return example


def test_a_published_example_is_a_predict_body_answered_as_it_is(
    api: TestClient, developer: Account, deployed: str
) -> None:
    page = _page(api, developer, deployed)
    example = _assert_example_is_a_request_body(page)
    answer = api.post(f"/v1/models/{deployed}/predict", json=example, headers=developer.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"]


def test_a_published_value_range_is_a_hint_and_values_outside_it_are_answered(
    api: TestClient, developer: Account, deployed: str
) -> None:
    schema = _page(api, developer, deployed)["input_schema"]
    ranged = [spec for spec in schema["inputs"] if spec["value_range"] is not None]
    assert ranged and all(spec["value_range_checked"] is False for spec in ranged)
    assert schema["value_range_note"] == VALUE_RANGE_HINT
    outside: dict[str, Any] = {}
    for spec in schema["inputs"]:
        _, high = spec["value_range"]
        rows = [high * 10 + 1000] * 2
        shape = spec["shape"][1:]
        outside[spec["name"]] = np.full((2, *shape), rows[0]).astype(spec["dtype"]).tolist()
    answer = api.post(
        f"/v1/models/{deployed}/predict", json={"inputs": outside}, headers=developer.headers
    )
    assert answer.status_code == 200, answer.text


def test_the_sdk_predicts_on_a_published_example_as_written(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    admin: Account,
    developer: Account,
    mlflow_server: str,
    connect: Callable[..., Any],
) -> None:
    name = f"sdk-table-{secrets.token_hex(3)}"
    register_table_model(mlflow_server, name, "regression")
    with run_api(serving_settings) as served:
        with httpx.Client(base_url=served.api_url, timeout=120) as http:
            deploy_classifier(http, admin.headers, name)
        sdk = connect(served.api_url, developer.key)
        model = sdk.get_model(name)
        prediction = sdk.predict(name, model.examples[0])
        by_name = sdk.predict(name, model.examples[0]["inputs"])
    assert prediction.outputs and prediction.outputs == by_name.outputs


def test_a_customers_trained_model_publishes_its_example_as_a_body_for_the_api_and_the_sdk(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    sessions: sessionmaker[Session],
    developer: Account,
    mlflow_server: str,
    connect: Callable[..., Any],
) -> None:
    """The version is recorded as a training job records it (its schema and examples from the
    registered ONNX graph), then the owner deploys it."""
    short = f"mine-{secrets.token_hex(3)}"
    qualified = f"{developer.user_id}.{short}"
    registered = register_table_model(mlflow_server, qualified, "classification")
    model_id = add_owned_classifier(sessions, developer.user_id, qualified, qualified, {})
    with tempfile.TemporaryDirectory() as workdir:
        uri = f"models:/{qualified}/{registered.version}"
        folder = mlflow.artifacts.download_artifacts(uri, dst_path=workdir)
        schema = OnnxModel.from_folder(Path(folder)).public_schema()
    trained = trained_models.TrainedVersion(
        version=registered.version,
        runtime=ModelRuntime.onnx,
        input_schema=schema,
        examples=[schema["example"]],
        metrics={"val_accuracy": 0.5},
        metric_name="val_accuracy",
        checks_passed=True,
        mlflow_run_id=None,
    )
    with session_scope(sessions) as session:
        model = session.get_one(Model, model_id)
        row = ModelVersion(model_id=model.id, version=trained.version, source="training")
        session.add(row)
        for field in ("input_schema", "examples", "metrics", "metric_name", "checks_passed"):
            setattr(row, field, getattr(trained, field))
    with run_api(serving_settings) as served:
        with httpx.Client(base_url=served.api_url, timeout=120) as http:
            headers = developer.headers
            deployed = http.post(f"/v1/models/{short}/deploy", headers=headers)
            assert deployed.json()["status"] == ModelStatus.ready, deployed.text
            page = http.get(f"/v1/models/{short}", headers=headers).json()
            example = _assert_example_is_a_request_body(page)
            answer = http.post(f"/v1/models/{short}/predict", json=example, headers=headers)
            assert answer.status_code == 200, answer.text
        sdk = connect(served.api_url, developer.key)
        prediction = sdk.predict(short, sdk.get_model(short).examples[0])
    assert prediction.labels is not None and len(prediction.labels) == 1
