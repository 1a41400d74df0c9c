"""Train it, own it, call it: a model trained on a customer's data is that customer's private
endpoint with no admin step, with its own input schema, versions, deploys and cost.

The API, the platform database (PostgreSQL), MLflow (a tracking server on loopback) and the
generation worker are real; the Dagster runs execute in-process on an ephemeral instance, the way
the daemon would launch them from the sensor's run requests.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.billing import training_charges
from goshen.config import Settings
from goshen.db.models import CreditLedgerEntry, LedgerEntryKind
from tests.fixtures.accounts import Account
from tests.fixtures.training import TINY_DIFFUSION, Daemon, digits_archive

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
CLASSES = {0: "zero", 1: "one", 2: "two"}
GOOD_TABLE_CONFIG = {"epochs": 40, "learning_rate": 0.01, "batch_size": 32}
POOR_TABLE_CONFIG = {"epochs": 1, "learning_rate": 1e-6, "batch_size": 32}


@pytest.fixture
def api(serving_settings: Settings) -> Iterator[TestClient]:
    """The API on the test's database and MLflow server (deploys read the registry)."""
    from serving.app import create_app

    with TestClient(create_app(serving_settings)) as client:
        yield client


def _upload(api: TestClient, owner: Account, name: str, content: bytes) -> str:
    files = {"file": (name, content, "application/octet-stream")}
    upload = api.post("/v1/datasets", files=files, data={"name": name}, headers=owner.headers)
    assert upload.status_code == 201, upload.text
    return str(upload.json()["id"])


def _train(api: TestClient, owner: Account, dataset_id: str, task: str, name: str, config: dict):
    body = {"dataset_id": dataset_id, "task": task, "model_name": name, "config": config}
    job = api.post("/v1/training-jobs", json=body, headers=owner.headers)
    assert job.status_code == 201, job.text
    return job.json()["id"]


def _run(api: TestClient, owner: Account, daemon: Daemon, job_id: str) -> dict[str, Any]:
    daemon.tick()
    job = api.get(f"/v1/training-jobs/{job_id}", headers=owner.headers).json()
    assert job["status"] == "succeeded", job
    return job


def _table(rows: int = 300, seed: int = 0) -> bytes:
    """A CSV whose `size` class follows its integer and float columns."""
    rng = np.random.default_rng(seed)
    width = rng.integers(0, 100, rows)
    ratio = rng.random(rows)
    size = np.where(width + 100 * ratio > 100, "big", "small")
    buffer = io.BytesIO()
    pl.DataFrame({"width": width, "ratio": ratio, "size": size}).write_csv(buffer)
    return buffer.getvalue()


def _captured(sessions: sessionmaker[Session], job_id: str) -> int:
    with sessions() as session:
        captured = session.scalar(
            select(CreditLedgerEntry.held_micros).where(
                CreditLedgerEntry.source == training_charges.source(job_id),
                CreditLedgerEntry.kind == LedgerEntryKind.capture,
            )
        )
    assert captured is not None
    return -captured


def test_a_trained_generator_is_its_owners_endpoint_with_its_classes(
    api: TestClient,
    developer: Account,
    make_account: Callable[..., Account],
    dagster_resources: dict,
    sessions: sessionmaker[Session],
    start_worker: Callable[..., Any],
) -> None:
    dataset = _upload(api, developer, "digits.zip", digits_archive(CLASSES))
    job_id = _train(api, developer, dataset, "diffusion", "trio", TINY_DIFFUSION)
    job = _run(api, developer, Daemon(dagster_resources), job_id)

    # The job names what it cost, as the ledger captured it, and links what it made.
    assert job["gpu_seconds"] > 0 and job["cost_micros"] == _captured(sessions, job_id) > 0
    links = job["links"]
    assert links["dataset"] == f"/v1/datasets/{dataset}" and links["model"] == "/v1/models/trio"
    assert links["mlflow_run"].endswith(f"/#/runs/{job['mlflow_run_id']}")
    assert links["dagster_run"].endswith(f"/runs/{job['dagster_run_id']}")

    mine = api.get("/v1/models?owner=me", headers=developer.headers).json()["data"]
    qualified = f"{developer.user_id}.trio"
    assert [model["name"] for model in mine] == [qualified]
    model = api.get("/v1/models/trio", headers=developer.headers).json()
    assert model["status"] == "ready" and model["visibility"] == "private" and model["owned"]
    assert model["classes"] == sorted(CLASSES.values())
    label = model["input_schema"]["properties"]["label"]
    assert {"type": "string", "enum": sorted(CLASSES.values())} in label["anyOf"]
    assert model["trained"]["dataset_id"] == dataset
    assert model["trained"]["training_job_id"] == job_id

    seven = {"model": "trio", "input": {"label": "seven"}}
    unknown = api.post("/v1/generate", json=seven, headers=developer.headers)
    assert unknown.status_code == 422 and "zero" in unknown.text
    start_worker()
    waiting = {**developer.headers, "Prefer": "wait=60"}
    for name in ("trio", qualified):
        made = api.post(
            "/v1/generate", json={"model": name, "input": {"label": "two"}}, headers=waiting
        )
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["status"] == "succeeded", body
        assert body["input"]["label"] == "two"
        png = api.get(body["output"]["images"][0]["url"]).content
        assert Image.open(io.BytesIO(png)).size == (8, 8)

    stranger = make_account()
    for path in ("/v1/models/trio", f"/v1/models/{qualified}", f"/v1/models/{qualified}/versions"):
        assert api.get(path, headers=stranger.headers).status_code == 404, path
    theirs = api.post(
        "/v1/generate", json={"model": qualified, "input": {"label": 0}}, headers=stranger.headers
    )
    assert theirs.status_code == 404
    assert api.get("/v1/models?owner=me", headers=stranger.headers).json()["data"] == []


def test_a_trained_table_model_predicts_by_name_and_promotes_only_when_better(
    api: TestClient,
    developer: Account,
    make_account: Callable[..., Account],
    dagster_resources: dict,
) -> None:
    dataset = _upload(api, developer, "sizes.csv", _table())
    daemon = Daemon(dagster_resources)

    def train(config: dict) -> dict[str, Any]:
        job_id = _train(
            api, developer, dataset, "classification", "sizer", {**config, "target": "size"}
        )
        return _run(api, developer, daemon, job_id)

    poor = train(POOR_TABLE_CONFIG)
    model = api.get("/v1/models/sizer", headers=developer.headers).json()
    assert model["live_version"] == poor["registered_version"]  # a first version serves at once
    inputs = {spec["name"]: spec["dtype"] for spec in model["input_schema"]["inputs"]}
    assert inputs == {"width": "int64", "ratio": "float64"}
    rows = {"inputs": {"width": [90, 3], "ratio": [0.9, 0.05]}}
    answer = api.post("/v1/models/sizer/predict", json=rows, headers=developer.headers)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["labels"]) == 2

    good = train(GOOD_TABLE_CONFIG)
    assert (
        api.get("/v1/models/sizer", headers=developer.headers).json()["live_version"]
        == (good["registered_version"])
    )
    answer = api.post("/v1/models/sizer/predict", json=rows, headers=developer.headers).json()
    assert answer["labels"] == ["big", "small"]
    worse = train(POOR_TABLE_CONFIG)
    versions = api.get("/v1/models/sizer/versions", headers=developer.headers).json()["data"]
    by_version = {row["version"]: row for row in versions}
    assert set(by_version) == {
        poor["registered_version"],
        good["registered_version"],
        worse["registered_version"],
    }
    assert [row["version"] for row in versions if row["live"]] == [good["registered_version"]]
    assert (
        by_version[worse["registered_version"]]["metrics"]["val_accuracy"]
        < (by_version[good["registered_version"]]["metrics"]["val_accuracy"])
    )
    assert by_version[good["registered_version"]]["training_job_id"] == good["id"]

    stranger = make_account()
    for verb, path in [
        ("post", "/v1/models/sizer/predict"),
        ("post", f"/v1/models/{developer.user_id}.sizer/rollback"),
        ("delete", f"/v1/models/{developer.user_id}.sizer"),
    ]:
        refused = api.request(verb, path, json=rows, headers=stranger.headers)
        assert refused.status_code == 404, (path, refused.text)

    rolled = api.post("/v1/models/sizer/rollback", headers=developer.headers)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["live_version"] == poor["registered_version"]
    assert api.post("/v1/models/sizer/predict", json=rows, headers=developer.headers).is_success

    assert api.delete("/v1/models/sizer", headers=developer.headers).status_code == 204
    assert api.get("/v1/models/sizer", headers=developer.headers).status_code == 404
    assert api.get("/v1/models?owner=me", headers=developer.headers).json()["data"] == []
