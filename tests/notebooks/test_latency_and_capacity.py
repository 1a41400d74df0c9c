"""notebooks/latency_and_capacity.py runs headless on a home with jobs, their usage events and
workers, and shows the percentiles, batches and utilisation the rows imply."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, JobStatus, Model, UsageEvent, Worker, WorkerStatus
from tests.fixtures.accounts import Account
from tests.fixtures.notebooks import run_notebook, use_home

NOTEBOOK = "latency_and_capacity"
NINE = datetime(2025, 3, 3, 9, tzinfo=UTC)
H100 = "NVIDIA H100"


def _ran(
    account: Account,
    model: Model,
    started: datetime,
    queue: float,
    run: float,
    *,
    batch_key: str | None = None,
    status: JobStatus = JobStatus.succeeded,
) -> Job:
    return Job(
        user_id=account.user_id,
        model_id=model.id,
        model_version="1",
        batch_key=batch_key,
        status=status,
        created_at=started - timedelta(seconds=queue),
        started_at=started,
        queue_seconds=queue,
        completed_at=started + timedelta(seconds=run),
        run_seconds=run,
        device=H100,
    )


def _worker(worker_id: str, alive: timedelta) -> Worker:
    return Worker(
        id=worker_id,
        host="gpu-1",
        pid=7,
        device_name=H100,
        status=WorkerStatus.stopped,
        started_at=NINE,
        heartbeat_at=NINE + alive,
    )


def _seed(sessions: sessionmaker[Session], account: Account, first: Model, second: Model) -> None:
    """`first`: a batch of three jobs at 9:00 (2 images each), one alone at 10:00; `second`: two
    jobs without a batch key at 9:30, one of them failed; a job canceled in the queue."""
    with session_scope(sessions) as session:
        batch = [_ran(account, first, NINE, q, 10, batch_key="k") for q in (1, 2, 3)]
        late = _ran(account, first, NINE + timedelta(hours=1), 9, 6, batch_key="k")
        half_past = NINE + timedelta(minutes=30)
        alone = [
            _ran(account, second, half_past, 4, 2),
            _ran(account, second, half_past, 4, 4, status=JobStatus.failed),
        ]
        canceled = Job(
            user_id=account.user_id,
            model_id=first.id,
            status=JobStatus.canceled,
            completed_at=NINE,
        )
        session.add_all([*batch, late, *alone, canceled])
        session.flush()
        for job, seconds in [*((job, 2.0) for job in batch), (late, 5.0), (alone[0], 1.0)]:
            session.add(
                UsageEvent(
                    user_id=account.user_id,
                    model_id=job.model_id,
                    job_id=job.id,
                    kind="generation",
                    quantity=2,
                    unit="image",
                    images=2,
                    seconds=seconds,
                    created_at=job.completed_at,
                )
            )
        session.add_all([_worker("wrk-a", timedelta(seconds=60)), _worker("wrk-b", timedelta(0))])


def test_the_notebook_shows_the_seeded_latency_and_capacity(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
) -> None:
    first, second = make_model(), make_model()
    _seed(sessions, developer, first, second)
    use_home(settings, monkeypatch)

    defs = run_notebook(NOTEBOOK)

    assert defs["ran"].height == 6
    by_model = {row["model"]: row for row in defs["by_model"].to_dicts()}
    assert by_model[first.name]["jobs"] == 4 and by_model[second.name]["jobs"] == 2
    # Queue seconds 1, 2, 3 and 9: the median between 2 and 3, the 95th near the top.
    assert by_model[first.name]["p50_queue"] == pytest.approx(2.5)
    assert by_model[first.name]["p95_queue"] == pytest.approx(3 + 0.85 * 6)
    assert by_model[second.name]["p50_run"] == pytest.approx(3.0)
    hours = {(row["hour"].hour, row["model"]): row["jobs"] for row in defs["by_hour"].to_dicts()}
    assert hours == {(9, first.name): 3, (9, second.name): 2, (10, first.name): 1}
    sizes = {(row["model"], row["jobs"]): row["batches"] for row in defs["batch_sizes"].to_dicts()}
    assert sizes == {(first.name, 3): 1, (first.name, 1): 1, (second.name, 1): 2}
    (device,) = defs["utilisation"].to_dicts()
    assert device["device"] == H100 and device["workers"] == 2 and device["jobs"] == 5
    assert device["busy_seconds"] == pytest.approx(12.0)
    assert device["utilisation"] == pytest.approx(12 / 60)
    assert defs["workers"]["id"].to_list() == ["wrk-a", "wrk-b"]


def test_the_notebook_runs_on_a_platform_with_no_jobs_yet(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_home(settings, monkeypatch)

    defs = run_notebook(NOTEBOOK)

    assert defs["ran"].is_empty() and defs["by_model"].is_empty()
    assert defs["batch_sizes"].is_empty() and defs["utilisation"].is_empty()
