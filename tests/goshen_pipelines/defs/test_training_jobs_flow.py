"""A training job from the API to a registered model, through the sensor and a Dagster run,
charged the seconds it ran when it succeeds or is canceled and nothing when its run fails.

The API, the platform database (PostgreSQL) and MLflow (a tracking server on
loopback) are real; the Dagster run executes in-process on an ephemeral instance, the way the
daemon would launch it from the sensor's run request.
"""

from __future__ import annotations

import mlflow
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen import registry, training
from goshen.billing import training_charges
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import CreditBalance, CreditLedgerEntry, TrainingJob, UsageEvent
from goshen_pipelines.defs.training.sensors import (
    run_key,
)
from tests.fixtures.accounts import Account
from tests.fixtures.training import TINY_DIFFUSION, Daemon, digits_archive

# The API and database layers run on both backends in tests/serving; this flow trains a model,
# so it runs once, on the production backend.
pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def _submit(client: TestClient, developer: Account, model_name: str) -> str:
    files = {
        "file": ("digits.zip", digits_archive({0: "digit-0", 1: "digit-1"}), "application/zip")
    }
    upload = client.post(
        "/v1/datasets", files=files, data={"name": "zeros and ones"}, headers=developer.headers
    )
    assert upload.status_code == 201, upload.text
    body = {
        "dataset_id": upload.json()["id"],
        "task": "diffusion",
        "model_name": model_name,
        "config": TINY_DIFFUSION,
    }
    job = client.post("/v1/training-jobs", json=body, headers=developer.headers)
    assert job.status_code == 201, job.text
    return job.json()["id"]


def _charges(sessions: sessionmaker[Session], job_id: str, user_id: str) -> dict[str, int]:
    """The job's ledger entries (kind -> held micros moved) and its training usage, with the
    user's ledger checked against the cached balance."""
    entry = CreditLedgerEntry
    with sessions() as session:
        moved = session.execute(
            select(entry.kind, entry.held_micros).where(
                entry.source == training_charges.source(job_id)
            )
        ).all()
        sums = session.execute(
            select(func.sum(entry.amount_micros), func.sum(entry.held_micros)).where(
                entry.user_id == user_id
            )
        ).one()
        cached = session.get_one(CreditBalance, user_id)
        usage = session.scalars(
            select(UsageEvent.cost_micros).where(
                UsageEvent.user_id == user_id, UsageEvent.kind == "training"
            )
        ).all()
    assert (cached.balance_micros, cached.held_micros) == tuple(sums)
    assert cached.held_micros == 0
    return {str(kind): held for kind, held in moved} | {"usage": sum(usage), "events": len(usage)}


def _charged_for_its_seconds(job: dict, charges: dict[str, int]) -> None:
    """What the job cost is the seconds it ran at the price, captured once from its hold."""
    cost = job["cost_micros"]
    assert job["gpu_seconds"] > 0 and 0 < cost < job["estimated_cost_micros"]
    assert cost == round(job["gpu_seconds"] * Settings().training_price_micros_per_second)
    assert charges == {
        "hold": job["estimated_cost_micros"],
        "capture": -cost,
        "release": cost - job["estimated_cost_micros"],
        "usage": cost,
        "events": 1,
    }


def test_api_job_trains_through_the_sensor_and_loads_as_production(
    client: TestClient, developer: Account, dagster_resources: dict, sessions: sessionmaker[Session]
) -> None:
    job_id = _submit(client, developer, "zeros-and-ones")
    daemon = Daemon(dagster_resources)
    assert [request.run_key for request in daemon.tick()] == [run_key(job_id)]
    assert daemon.tick() == []  # the cursor moved on: a job never launches twice

    job = client.get(f"/v1/training-jobs/{job_id}", headers=developer.headers).json()
    assert job["status"] == "succeeded", job
    assert job["dagster_run_id"] and job["mlflow_run_id"] and job["registered_version"]
    _charged_for_its_seconds(job, _charges(sessions, job_id, developer.user_id))
    logs = client.get(f"/v1/training-jobs/{job_id}/logs", headers=developer.headers).text
    assert "event: log\ndata: epoch 1/1 " in logs and " loss=" in logs and "event: done" in logs

    mlflow.set_tracking_uri(dagster_resources["mlflow"].uri)
    mlflow.set_registry_uri(dagster_resources["mlflow"].uri)
    name = f"{developer.user_id}.zeros-and-ones"
    model = registry.load_onnx(name)
    assert [i.name for i in model.graph.input] == ["sample", "timestep", "class_labels"]
    live = registry.version_by_alias(
        dagster_resources["mlflow"].client(), name, registry.PRODUCTION
    )
    assert str(live.version) == job["registered_version"]
    assert live.tags["dataset_id"] == job["dataset_id"]
    dataset = client.get(f"/v1/datasets/{job['dataset_id']}", headers=developer.headers).json()
    assert dataset["status"] == "ready"


def test_a_cancel_during_training_ends_the_job_canceled(
    client: TestClient, developer: Account, dagster_resources: dict, sessions: sessionmaker[Session]
) -> None:
    job_id = _submit(client, developer, "stopped-early")
    # The cancel lands after the run claimed the job, as it would mid-training.
    with session_scope(sessions) as session:
        session.execute(
            update(TrainingJob).where(TrainingJob.id == job_id).values(cancel_requested=True)
        )
    # Its run then fails, and the failure sensor sees the job ended.
    Daemon(dagster_resources).tick()
    job = client.get(f"/v1/training-jobs/{job_id}", headers=developer.headers).json()
    assert job["status"] == "canceled"
    assert job["registered_version"] is None
    _charged_for_its_seconds(job, _charges(sessions, job_id, developer.user_id))


def test_a_failed_run_charges_nothing(
    client: TestClient, developer: Account, dagster_resources: dict, sessions: sessionmaker[Session]
) -> None:
    job_id = _submit(client, developer, "lost-its-data")
    # The platform loses the job's dataset: its run fails after it started.
    with session_scope(sessions) as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(dataset_id=None))
    Daemon(dagster_resources).tick()
    job = client.get(f"/v1/training-jobs/{job_id}", headers=developer.headers).json()
    assert job["status"] == "failed" and job["error"]
    assert job["cost_micros"] == 0
    charges = _charges(sessions, job_id, developer.user_id)
    held = job["estimated_cost_micros"]
    assert charges == {"hold": held, "release": -held, "usage": 0, "events": 0}


def test_a_run_past_its_time_limit_is_stopped_uncharged(
    client: TestClient,
    developer: Account,
    dagster_resources: dict,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = _submit(client, developer, "too-slow")
    # A limit the first epoch is sure to pass, as a run whose estimate was far off would.
    monkeypatch.setattr(training, "time_limit", lambda session, job: 0)
    Daemon(dagster_resources).tick()
    job = client.get(f"/v1/training-jobs/{job_id}", headers=developer.headers).json()
    assert job["status"] == "failed" and "time limit of 0 s" in job["error"]
    assert job["cost_micros"] == 0 and job["registered_version"] is None
    charges = _charges(sessions, job_id, developer.user_id)
    held = job["estimated_cost_micros"]
    assert charges == {"hold": held, "release": -held, "usage": 0, "events": 0}
