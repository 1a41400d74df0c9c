"""/v1/training-jobs: validated, priced submissions; status, logs as server-sent events, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen import training
from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, TrainingJob, TrainingStatus, User
from tests.fixtures.accounts import Account


@pytest.fixture
def make_dataset(sessions: sessionmaker[Session]) -> Callable[..., str]:
    def make(user_id: str, kind: DatasetKind = DatasetKind.images) -> str:
        with session_scope(sessions) as session:
            dataset = Dataset(
                user_id=user_id,
                name="d",
                kind=kind,
                storage_prefix=f"datasets/{user_id}/x",
                file_count=100,
                schema={"columns": {"x": "Float64", "y": "Int64"}},
            )
            session.add(dataset)
            session.flush()
            return dataset.id

    return make


def _submit(client: TestClient, account, dataset_id: str, **overrides):  # type: ignore[no-untyped-def]
    body = {"dataset_id": dataset_id, "task": "diffusion", "model_name": "my-digits"} | overrides
    return client.post("/v1/training-jobs", json=body, headers=account.headers)


def test_submit_list_get_and_cancel(
    client: TestClient, developer: Account, make_dataset: Callable[..., str]
) -> None:
    dataset_id = make_dataset(developer.user_id)
    created = _submit(client, developer, dataset_id, config={"epochs": 5})
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "queued" and job["config"]["epochs"] == 5
    assert job["estimated_cost_micros"] > 0
    assert job["registered_model"] == f"{developer.user_id}.my-digits"
    listed = client.get("/v1/training-jobs", headers=developer.headers).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]

    canceled = client.post(f"/v1/training-jobs/{job['id']}/cancel", headers=developer.headers)
    assert canceled.json()["status"] == "canceled"
    again = client.post(f"/v1/training-jobs/{job['id']}/cancel", headers=developer.headers)
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"config": {"epochs": 100000}}, "config.epochs"),
        ({"config": {"image_size": 12}}, "config.image_size"),
        ({"config": {"batch_size": 0}}, "config.batch_size"),
        ({"config": {"optimizer": "sgd"}}, "config.optimizer"),
        ({"model_name": "Bad Name!"}, "model_name"),
        ({"task": "translation"}, "task"),
        ({"task": "classification"}, "task"),
        ({"status": "succeeded"}, "status"),
    ],
)
def test_bad_requests_name_the_field(
    client: TestClient,
    developer: Account,
    make_dataset: Callable[..., str],
    overrides: Any,
    field: str,
) -> None:
    response = _submit(client, developer, make_dataset(developer.user_id), **overrides)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]


def test_tabular_jobs_need_an_existing_target(
    client: TestClient, developer: Account, make_dataset: Callable[..., str]
) -> None:
    table = make_dataset(developer.user_id, DatasetKind.tabular)
    missing = _submit(client, developer, table, task="classification")
    assert missing.status_code == 422 and "config.target" in missing.text
    wrong = _submit(client, developer, table, task="regression", config={"target": "z"})
    assert wrong.status_code == 422 and "'z' is not in dataset" in wrong.json()["detail"]
    good = _submit(client, developer, table, task="regression", config={"target": "y"})
    assert good.status_code == 201


def test_other_tenants_get_404(
    client: TestClient,
    developer: Account,
    make_account: Callable[..., Account],
    make_dataset: Callable[..., str],
) -> None:
    other = make_account()
    assert _submit(client, other, make_dataset(developer.user_id)).status_code == 404
    job_id = _submit(client, developer, make_dataset(developer.user_id)).json()["id"]
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/logs")]:
        response = client.request(
            method, f"/v1/training-jobs/{job_id}{path}", headers=other.headers
        )
        assert response.status_code == 404, path
    no_scope = make_account(scopes=["generate"])
    assert client.get("/v1/training-jobs", headers=no_scope.headers).status_code == 403


def test_logs_stream_as_server_sent_events(
    client: TestClient,
    developer: Account,
    make_dataset: Callable[..., str],
    sessions: sessionmaker[Session],
) -> None:
    job_id = _submit(client, developer, make_dataset(developer.user_id)).json()["id"]
    with session_scope(sessions) as session:
        training.mark_running(session, job_id, "run-1")
        training.append_log(session, job_id, "epoch 1/2 loss=0.5", {"epoch": 1, "epochs": 2})
        training.append_log(session, job_id, "epoch 2/2 loss=0.3", {"epoch": 2, "epochs": 2})
        training.finish(
            session,
            job_id,
            TrainingStatus.succeeded,
            price_micros_per_second=1,
            registered_version="1",
        )
    response = client.get(f"/v1/training-jobs/{job_id}/logs", headers=developer.headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    names = [
        line.split(": ", 1)[1]
        for block in events
        for line in block.splitlines()
        if line.startswith("event:")
    ]
    assert names == ["log", "log", "status", "done"]
    assert "data: epoch 2/2 loss=0.3" in events[1]
    resumed = client.get(
        f"/v1/training-jobs/{job_id}/logs",
        headers=developer.headers | {"Last-Event-ID": events[0].split("\n")[0].split(": ")[1]},
    )
    assert "epoch 1/2" not in resumed.text and "epoch 2/2" in resumed.text


def test_finish_keeps_the_first_outcome(
    developer: Account, make_dataset: Callable[..., str], sessions: sessionmaker[Session]
) -> None:
    dataset_id = make_dataset(developer.user_id)
    with session_scope(sessions) as session:
        job = training.submit(
            session,
            session.get(User, developer.user_id),
            dataset_id=dataset_id,
            task=training.Task.diffusion,
            model_name="m1",
            config=training.TrainingConfig(),
            price_micros_per_second=1,
        )
        job_id = job.id
    with session_scope(sessions) as session:
        assert training.finish(session, job_id, TrainingStatus.canceled, price_micros_per_second=1)
        assert not training.finish(
            session, job_id, TrainingStatus.succeeded, price_micros_per_second=1
        )
    with sessions() as session:
        assert session.get(TrainingJob, job_id).status == TrainingStatus.canceled
