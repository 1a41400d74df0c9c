"""/predict on a table model exported the way training jobs export it: one 1-D input per
feature column, named and typed as the column, with the ranges seen in training."""

from __future__ import annotations

import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlflow
import numpy as np
import onnx
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from goshen import registry
from goshen.config import Settings
from goshen.db.models import Role
from goshen_pipelines.lib import export, publishing
from goshen_pipelines.lib.classifier import TabularNet, TrainedTabularModel
from serving.app import create_app
from tests.fixtures.accounts import Account
from tests.fixtures.models import deploy_classifier

COLUMNS = [("age", "int64"), ("income", "float64"), ("score", "float32")]
RNG = np.random.default_rng(0)
FEATURES = np.stack(
    [RNG.integers(18, 80, 40), RNG.normal(1000.0, 300.0, 40), RNG.random(40)], axis=1
).astype(np.float32)


def _columns(rows: np.ndarray) -> dict[str, list[Any]]:
    """Rows of FEATURES as the column-oriented body a developer sends."""
    return {
        "age": rows[:, 0].astype(int).tolist(),
        "income": rows[:, 1].tolist(),
        "score": rows[:, 2].tolist(),
    }


@dataclass(frozen=True)
class TableModel:
    name: str
    probabilities: np.ndarray  # what PyTorch answers for FEATURES


@pytest.fixture(scope="module")
def table_model(mlflow_server: str) -> TableModel:
    """A random-weights classifier over COLUMNS, exported per column and registered live."""
    torch.manual_seed(0)
    mean, std = torch.from_numpy(FEATURES.mean(axis=0)), torch.from_numpy(FEATURES.std(axis=0))
    net = TabularNet((8,), 0.0, mean, std, num_outputs=2).eval()
    model = TrainedTabularModel(net, "classification", 3, ["no", "yes"], {})
    name = f"table-{secrets.token_hex(3)}"
    metadata = {
        "kind": "onnx",
        "task": "classification",
        "classes": ["no", "yes"],
        "input_ranges": export.input_ranges(FEATURES, COLUMNS),
    }
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    mlflow.set_experiment("serving-tests")
    with tempfile.TemporaryDirectory() as workdir, mlflow.start_run():
        path, diff = publishing.export_tabular(model, FEATURES, Path(workdir), COLUMNS)
        assert diff <= publishing.PARITY_TOLERANCE
        version = registry.log_onnx_model(
            onnx.load(str(path)), name, metadata=metadata, tags={registry.CHECKS_TAG: "true"}
        )
    mlflow.MlflowClient().set_registered_model_alias(name, registry.PRODUCTION, version.version)
    with torch.inference_mode():
        expected = model.export_module()(torch.from_numpy(FEATURES)).numpy()
    return TableModel(name, expected)


@pytest.fixture
def api(serving_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings)) as client:
        yield client


@pytest.fixture
def admin(make_account: Callable[..., Account]) -> Account:
    return make_account(Role.admin)


@pytest.fixture
def deployed(api: TestClient, admin: Account, table_model: TableModel) -> dict[str, Any]:
    """The table model's catalog entry, deployed."""
    return deploy_classifier(api, admin.headers, table_model.name)


def _predict(api: TestClient, account: Account, name: str, inputs: Any) -> Any:
    return api.post(f"/v1/models/{name}/predict", json={"inputs": inputs}, headers=account.headers)


def test_the_model_page_lists_each_column_with_its_type_and_range(
    api: TestClient, developer: Account, deployed: dict[str, Any]
) -> None:
    name = deployed["name"]
    page = api.get(f"/v1/models/{name}", headers=developer.headers).json()
    inputs = page["input_schema"]["inputs"]
    assert [(spec["name"], spec["dtype"], spec["shape"]) for spec in inputs] == [
        (name, dtype, [None]) for name, dtype in COLUMNS
    ]
    for index, spec in enumerate(inputs):
        column = FEATURES[:, index]
        assert spec["value_range"] == [float(column.min()), float(column.max())]
    example = page["examples"][0]["inputs"]
    assert sorted(example) == sorted(name for name, _ in COLUMNS)
    assert _predict(api, developer, name, example).status_code == 200


def test_concurrent_column_requests_are_batched_and_get_their_own_rows(
    api: TestClient,
    admin: Account,
    developer: Account,
    deployed: dict[str, Any],
    table_model: TableModel,
) -> None:
    name = deployed["name"]
    # A longer wait makes the merge certain on a busy machine; the code path is the same.
    patched = api.patch(f"/v1/admin/models/{name}", json={"max_wait_ms": 50}, headers=admin.headers)
    assert patched.json()["max_wait_ms"] == 50
    slices = [slice(2 * n, 2 * n + 1 + n % 2) for n in range(16)]
    answers: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(slices))

    def send(number: int) -> None:
        barrier.wait()
        response = _predict(api, developer, name, _columns(FEATURES[slices[number]]))
        assert response.status_code == 200, response.text
        answers[number] = np.asarray(response.json()["outputs"]["probabilities"])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(slices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = cast(FastAPI, api.app).state
    batcher = state.api.predict_models._loaded[deployed["id"]].batcher
    assert max(batcher.batch_sizes) > 1, batcher.batch_sizes
    for number, rows in enumerate(slices):
        np.testing.assert_allclose(answers[number], table_model.probabilities[rows], atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"age": [31], "score": [0.5]}, "inputs.income"),  # a missing column
        ({"age": ["31"], "income": [1200.5], "score": [0.5]}, "inputs.age"),  # text
        ({"age": [31], "income": [True], "score": [0.5]}, "inputs.income"),  # a boolean
        ({"age": [31.5], "income": [1200.5], "score": [0.5]}, "inputs.age"),  # not an integer
        ({"age": [[31]], "income": [1200.5], "score": [0.5]}, "inputs.age"),  # not 1-D
    ],
)
def test_a_bad_column_is_a_422_naming_it(
    api: TestClient, developer: Account, deployed: dict[str, Any], inputs: Any, field: str
) -> None:
    response = _predict(api, developer, deployed["name"], inputs)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]
