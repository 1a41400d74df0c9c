"""A training job from the API to a registered model, through the sensor and a Dagster run.

The API, the platform database (PostgreSQL) and MLflow (a tracking server on
loopback) are real; the Dagster run executes in-process on an ephemeral instance, the way the
daemon would launch it from the sensor's run request.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from goshen import registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import TrainingJob
from goshen_pipelines.definitions import defs
from goshen_pipelines.defs.jobs import training_run_job
from goshen_pipelines.defs.training.sensors import run_key, training_job_sensor
from goshen_pipelines.lib.digits import load_digit_images
from goshen_pipelines.resources import ArtifactStorage, MLflowTracking, PlatformDatabase
from tests.fixtures.accounts import Account

TINY = {"epochs": 1, "batch_size": 32, "image_size": 8}
# The API and database layers run on both backends in tests/serving; this flow trains a model,
# so it runs once, on the production backend.
pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def _digits_archive(per_class: int = 20) -> bytes:
    """Handwritten 0s and 1s as PNGs, one folder per label (ImageFolder layout)."""
    images, labels = load_digit_images()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for digit in (0, 1):
            for index in (labels == digit).nonzero()[0][:per_class]:
                png = io.BytesIO()
                Image.fromarray((images[index] * 255).astype("uint8")).save(png, format="PNG")
                archive.writestr(f"digit-{digit}/{index}.png", png.getvalue())
    return buffer.getvalue()


@pytest.fixture
def resources(settings: Settings, mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("GOSHEN_HOME", str(settings.home_dir))
    yield {
        "platform_db": PlatformDatabase(database_url=settings.resolved_database_url),
        "mlflow": MLflowTracking(tracking_uri=mlflow_server),
        "artifact_store": ArtifactStorage(),
        "io_manager": dg.FilesystemIOManager(base_dir=str(Path(settings.home_dir) / "io")),
    }
    mlflow.set_tracking_uri("")
    mlflow.set_registry_uri("")


def _submit(client: TestClient, developer: Account, model_name: str) -> str:
    files = {"file": ("digits.zip", _digits_archive(), "application/zip")}
    upload = client.post(
        "/v1/datasets", files=files, data={"name": "zeros and ones"}, headers=developer.headers
    )
    assert upload.status_code == 201, upload.text
    body = {
        "dataset_id": upload.json()["id"],
        "task": "diffusion",
        "model_name": model_name,
        "config": TINY,
    }
    job = client.post("/v1/training-jobs", json=body, headers=developer.headers)
    assert job.status_code == 201, job.text
    return job.json()["id"]


class Daemon:
    """What the Dagster daemon does for the sensor: keep its cursor, run what it requests."""

    def __init__(self, resources: dict) -> None:
        self.instance = dg.DagsterInstance.ephemeral()
        self.resources = resources
        self.cursor: str | None = None

    def tick(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(
            instance=self.instance, resources=self.resources, cursor=self.cursor
        ) as context:
            result = training_job_sensor(context)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        self.cursor = result.cursor or self.cursor
        job = defs.resolve_job_def(training_run_job.name)
        for request in result.run_requests or []:
            job.execute_in_process(
                partition_key=request.partition_key,
                instance=self.instance,
                resources=self.resources,
                raise_on_error=False,
            )
        return list(result.run_requests or [])


def test_api_job_trains_through_the_sensor_and_loads_as_production(
    client: TestClient, developer: Account, resources: dict
) -> None:
    job_id = _submit(client, developer, "zeros-and-ones")
    daemon = Daemon(resources)
    assert [request.run_key for request in daemon.tick()] == [run_key(job_id)]
    assert daemon.tick() == []  # the cursor moved on: a job never launches twice

    job = client.get(f"/v1/training-jobs/{job_id}", headers=developer.headers).json()
    assert job["status"] == "succeeded", job
    assert job["dagster_run_id"] and job["mlflow_run_id"] and job["registered_version"]
    logs = client.get(f"/v1/training-jobs/{job_id}/logs", headers=developer.headers).text
    assert "event: log\ndata: epoch 1/1 " in logs and " loss=" in logs and "event: done" in logs

    mlflow.set_tracking_uri(resources["mlflow"].uri)
    mlflow.set_registry_uri(resources["mlflow"].uri)
    name = f"{developer.user_id}.zeros-and-ones"
    model = registry.load_onnx(name)
    assert [i.name for i in model.graph.input] == ["sample", "timestep", "class_labels"]
    live = registry.version_by_alias(resources["mlflow"].client(), name, registry.PRODUCTION)
    assert str(live.version) == job["registered_version"]
    assert live.tags["dataset_id"] == job["dataset_id"]
    dataset = client.get(f"/v1/datasets/{job['dataset_id']}", headers=developer.headers).json()
    assert dataset["status"] == "ready"


def test_a_cancel_during_training_ends_the_job_canceled(
    client: TestClient, developer: Account, resources: dict, sessions: sessionmaker[Session]
) -> None:
    job_id = _submit(client, developer, "stopped-early")
    # The cancel lands after the run claimed the job, as it would mid-training.
    with session_scope(sessions) as session:
        session.execute(
            update(TrainingJob).where(TrainingJob.id == job_id).values(cancel_requested=True)
        )
    Daemon(resources).tick()
    job = client.get(f"/v1/training-jobs/{job_id}", headers=developer.headers).json()
    assert job["status"] == "canceled"
    assert job["registered_version"] is None
