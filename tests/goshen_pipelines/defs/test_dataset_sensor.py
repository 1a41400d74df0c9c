"""The uploaded-dataset sensor: each new upload is ingested once, in creation order; the asset
moves the dataset's row through validating, with its progress, to ready or failed."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, DatasetStatus
from goshen.uploads.limits import UploadLimits
from goshen.uploads.store import store_dataset
from goshen_pipelines.defs.datasets.assets import uploaded_dataset, uploaded_dataset_sensor
from goshen_pipelines.defs.datasets.sensors import (
    dataset_of,
    dataset_run_failure_sensor,
    fail_unfinished,
)
from goshen_pipelines.lib import datasets as datasets_lib
from goshen_pipelines.lib import ingest as ingest_lib
from goshen_pipelines.resources import ArtifactStorage, PlatformDatabase
from tests.fixtures.accounts import Account


def _add(sessions: sessionmaker[Session], user_id: str, status: DatasetStatus) -> str:
    with session_scope(sessions) as session:
        dataset = Dataset(
            user_id=user_id, name="d", kind=DatasetKind.images, storage_prefix="p", status=status
        )
        session.add(dataset)
        session.flush()
        return dataset.id


def _tick(settings: Settings, cursor: str | None) -> dg.SensorResult:
    resources = {"platform_db": PlatformDatabase(database_url=settings.resolved_database_url)}
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources=resources, cursor=cursor
    ) as context:
        return uploaded_dataset_sensor(context)


def test_new_uploads_are_requested_once(
    settings: Settings, sessions: sessionmaker[Session], developer: Account
) -> None:
    first = _add(sessions, developer.user_id, DatasetStatus.uploaded)
    _add(sessions, developer.user_id, DatasetStatus.ready)  # already ingested: not requested
    second = _add(sessions, developer.user_id, DatasetStatus.uploaded)

    result = _tick(settings, None)
    assert [r.run_key for r in result.run_requests] == [f"dataset-{first}", f"dataset-{second}"]
    assert [r.partition_key for r in result.run_requests] == [first, second]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [first, second]
    assert result.cursor == second

    again = _tick(settings, result.cursor)
    assert not again.run_requests and again.skip_reason is not None
    third = _add(sessions, developer.user_id, DatasetStatus.uploaded)
    assert [r.partition_key for r in _tick(settings, result.cursor).run_requests] == [third]


@pytest.fixture
def artifacts(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> ArtifactStorage:
    monkeypatch.setenv("GOSHEN_HOME", str(settings.home_dir))
    return ArtifactStorage()


def _upload_images(
    settings: Settings,
    sessions: sessionmaker[Session],
    store: ArtifactStorage,
    user_id: str,
    tmp_path: Path,
) -> str:
    """An archive of 40 PNGs stored and recorded as the API does."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(40):
            png = io.BytesIO()
            Image.new("L", (8, 8), index).save(png, format="PNG")
            archive.writestr(f"{index % 2}/{index}.png", png.getvalue())
    path = tmp_path / "upload.zip"
    path.write_bytes(buffer.getvalue())
    dataset_id = _add(sessions, user_id, DatasetStatus.uploaded)
    prefix = f"datasets/{user_id}/{dataset_id}"
    stored = store_dataset(path, store.store, prefix, UploadLimits.from_settings(settings))
    with session_scope(sessions) as session:
        dataset = session.get_one(Dataset, dataset_id)
        dataset.storage_prefix, dataset.file_count = prefix, stored.file_count
    return dataset_id


def _materialize(
    settings: Settings, artifacts: ArtifactStorage, dataset_id: str
) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("dataset", [dataset_id])
    return dg.materialize(
        [uploaded_dataset],
        partition_key=dataset_id,
        instance=instance,
        resources={
            "platform_db": PlatformDatabase(database_url=settings.resolved_database_url),
            "artifact_store": artifacts,
        },
        raise_on_error=False,
    )


def test_an_ingested_dataset_ends_ready_at_100_percent(
    settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    artifacts: ArtifactStorage,
    tmp_path: Path,
) -> None:
    dataset_id = _upload_images(settings, sessions, artifacts, developer.user_id, tmp_path)
    assert _materialize(settings, artifacts, dataset_id).success
    with session_scope(sessions) as session:
        dataset = session.get_one(Dataset, dataset_id)
        assert dataset.status == DatasetStatus.ready and dataset.error is None
        assert dataset.progress == {
            "stage": "writing parquet",
            "done": 40,
            "total": 40,
            "unit": "rows",
            "percent": 100,
        }


def test_a_dataset_that_cannot_be_ingested_ends_failed_with_the_reason(
    settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    artifacts: ArtifactStorage,
    tmp_path: Path,
) -> None:
    dataset_id = _upload_images(settings, sessions, artifacts, developer.user_id, tmp_path)
    prefix = f"datasets/{developer.user_id}/{dataset_id}"
    artifacts.store.put(f"{prefix}/manifest.json", b'{"version": 99}')
    assert not _materialize(settings, artifacts, dataset_id).success
    with session_scope(sessions) as session:
        dataset = session.get_one(Dataset, dataset_id)
        # Kept although the run failed: the owner sees why instead of a dataset stuck validating.
        assert dataset.status == DatasetStatus.failed
        assert dataset.error is not None and "version 99" in dataset.error


def test_a_run_that_dies_before_the_asset_records_it_fails_its_dataset(
    settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    artifacts: ArtifactStorage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run killed mid-ingestion leaves its dataset validating; the run-failure sensor ends
    it failed (an already-ended dataset is left as it is)."""
    dataset_id = _upload_images(settings, sessions, artifacts, developer.user_id, tmp_path)

    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the run's process died")

    # Neither ingestion nor recording its failure gets to finish, as with a kill -9.
    monkeypatch.setattr(ingest_lib, "ingest_dataset", killed)
    monkeypatch.setattr(datasets_lib, "fail_ingest", killed)
    result = _materialize(settings, artifacts, dataset_id)
    assert not result.success
    monkeypatch.undo()
    with session_scope(sessions) as session:
        assert session.get_one(Dataset, dataset_id).status == DatasetStatus.validating

    run = result.dagster_run
    assert dataset_of(run) == dataset_id
    resources = {"platform_db": PlatformDatabase(database_url=settings.resolved_database_url)}
    with dg.build_run_status_sensor_context(
        sensor_name=dataset_run_failure_sensor.name,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=dg.DagsterInstance.ephemeral(),
        dagster_run=run,
        resources=resources,
    ) as context:
        dataset_run_failure_sensor(context.for_run_failure())
    with session_scope(sessions) as session:
        dataset = session.get_one(Dataset, dataset_id)
        assert dataset.status == DatasetStatus.failed and run.run_id in (dataset.error or "")
    assert not fail_unfinished(resources["platform_db"], dataset_id, "again")


def test_only_ingestion_runs_are_a_datasets() -> None:
    dataset_id, training_id = "ds_" + "0" * 26, "trn_" + "0" * 26
    ingesting = dg.DagsterRun(job_name="__ASSET_JOB", tags={"dagster/partition": dataset_id})
    training = dg.DagsterRun(job_name="training_run_job", tags={"dagster/partition": training_id})
    assert dataset_of(ingesting) == dataset_id
    assert dataset_of(training) is None
    assert dataset_of(dg.DagsterRun(job_name="digits_models")) is None
