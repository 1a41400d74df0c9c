"""Workers: each worker's host, device, models, current batch and heartbeat, stale ones marked
and counted, gone ones only on request; an empty fleet says how to start a worker; a refused
key shows the API's problem."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, JobStatus, Model, Worker, WorkerStatus
from tests.dashboard.conftest import Dashboard, texts
from tests.fixtures.accounts import Account


@pytest.fixture
def serving_settings(serving_settings: Settings) -> Settings:
    """Heartbeats every minute (stale after 3), so a worker seeded a moment ago is still fresh
    when the page reads it."""
    return Settings(
        **{**serving_settings.model_dump(), "_env_file": None, "worker_heartbeat_seconds": 60}
    )


def _worker(worker_id: str, host: str, status: WorkerStatus, silent: timedelta) -> Worker:
    now = datetime.now(UTC)
    return Worker(
        id=worker_id,
        host=host,
        pid=4242,
        device_name="NVIDIA H100",
        device_memory_bytes=80 * 2**30,
        device="cuda:1" if status is WorkerStatus.busy else None,
        memory_used_bytes=12 * 2**30 if status is WorkerStatus.busy else None,
        loaded_models=[{"model": "digits", "version": "3"}],
        status=status,
        started_at=now - timedelta(days=3),
        heartbeat_at=now - silent,
    )


def _rows(app: object) -> dict[str, dict[str, object]]:
    """The workers table's rows by host."""
    frame = app.dataframe[0].value  # type: ignore[attr-defined]
    return {row["Host"]: row for row in frame.to_dict("records")}


def test_workers_show_their_batch_and_stale_ones_are_marked(
    dashboard: Dashboard,
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
) -> None:
    model = make_model()
    with session_scope(sessions) as session:
        session.add_all(
            [
                _worker("wrk-fresh", "gpu-fresh", WorkerStatus.busy, timedelta(seconds=1)),
                _worker("wrk-silent", "gpu-silent", WorkerStatus.idle, timedelta(minutes=10)),
                _worker("wrk-gone", "gpu-gone", WorkerStatus.stopped, timedelta(days=2)),
            ]
        )
        running = Job(
            user_id=developer.user_id,
            model_id=model.id,
            status=JobStatus.running,
            lease_owner="wrk-fresh",
        )
        session.add(running)

    app = dashboard.open("workers")

    assert not app.error and "Workers" in texts(app.title)
    rows = _rows(app)
    assert set(rows) == {"gpu-fresh", "gpu-silent"}
    fresh, silent = rows["gpu-fresh"], rows["gpu-silent"]
    assert fresh["Stale"] == "" and silent["Stale"] == "⚠️ stale"
    assert fresh["Running jobs"] == f"{running.id} ({model.name})"
    assert fresh["Device"] == "cuda:1 · NVIDIA H100" and fresh["Memory"] == "12 GiB of 80 GiB"
    # Workers that started before devices were reported: the device's name and total.
    assert silent["Device"] == "NVIDIA H100" and silent["Memory"] == "80 GiB"
    assert fresh["Loaded models"] == "digits v3" and fresh["Status"] == "busy"
    assert str(silent["Heartbeat"]).startswith("10 min")
    assert "Stale workers: 1 of 2" in texts(app.warning)

    app.toggle[0].set_value(True).run()

    assert not app.exception
    assert set(_rows(app)) == {"gpu-fresh", "gpu-silent", "gpu-gone"}
    assert _rows(app)["gpu-gone"]["Stale"] == ""  # stopped: not expected to heartbeat


def test_no_worker_says_how_to_start_one(dashboard: Dashboard) -> None:
    app = dashboard.open("workers")

    assert not app.error and not app.dataframe
    assert "No worker has reported" in texts(app.info)
    assert "`goshen worker`" in texts(app.info)


def test_a_revoked_key_shows_the_apis_problem(dashboard: Dashboard) -> None:
    app = dashboard.open("workers")
    dashboard.api.admin_revoke_key(dashboard.admin.key_id)

    app.run()

    assert not app.exception and not app.info
    assert "Listing the workers failed — " in texts(app.error)
    assert "(401)" in texts(app.error)
