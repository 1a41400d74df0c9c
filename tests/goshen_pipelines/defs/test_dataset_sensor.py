"""The uploaded-dataset sensor: each new upload is ingested once, in creation order."""

from __future__ import annotations

import dagster as dg
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, DatasetStatus
from goshen_pipelines.defs.datasets.assets import uploaded_dataset_sensor
from goshen_pipelines.resources import PlatformDatabase
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
