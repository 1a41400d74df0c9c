"""A dependency that is down: a worker whose MLflow registry is stopped, or whose artifact store
cannot be written, ends the attempt at once with an error naming it, reports itself unhealthy,
and puts the job back in the queue without spending an attempt; once the dependency is back the
job succeeds and the worker is healthy again. Outages stay bounded: past OUTAGE_RETRIES of them
a job spends its attempts like any failure."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, JobEvent, JobStatus, Model, Worker, WorkerStatus, utcnow
from goshen.tracking import running_tracking_server
from serving.jobs import retry, transitions
from serving.jobs.claim import claim_batch
from serving.jobs.effects import JobEffects
from tests.fixtures.accounts import Account
from tests.fixtures.models import register_tiny_digits
from tests.serving.worker.jobs import has_ended, queue_jobs, wait_for

# Where an attempt must end once it meets a dependency that is down: the test's
# GOSHEN_DEPENDENCY_TIMEOUT_SECONDS (2), with generous slack for a loaded CI machine.
WITHIN_SECONDS = 30
MLFLOW_CLIENT_VARIABLES = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _outage_seen(job: Job) -> bool:
    return any(entry.get("outage") for entry in job.attempt_errors)


def _worker(sessions: sessionmaker[Session], until: Callable[[Worker], bool]) -> Worker:
    deadline = time.monotonic() + WITHIN_SECONDS
    while True:
        with sessions() as session:
            workers = list(session.scalars(select(Worker)))
        if workers and until(workers[0]):
            return workers[0]
        assert time.monotonic() < deadline, [(w.status, w.status_detail) for w in workers]
        time.sleep(0.1)


def _is_healthy(worker: Worker) -> bool:
    return worker.status == WorkerStatus.idle and worker.status_detail is None


def _seconds_to_first_outage(sessions: sessionmaker[Session], job_id: str) -> float:
    """From the job's first claim to the status event that put it back in the queue."""
    with sessions() as session:
        events = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.type == "status")
            .order_by(JobEvent.id)
        ).all()
    claimed = next(event for event in events if event.data["status"] == "running")
    requeued = next(event for event in events if "retry_in_seconds" in event.data)
    return (requeued.created_at - claimed.created_at).total_seconds()


@pytest.fixture
def mlflow_globals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What a worker process sets for MLflow (tracking URI, client bounds) is put back after."""
    for name in MLFLOW_CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


@pytest.mark.usefixtures("mlflow_globals")
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_stopped_registry_sends_the_job_back_until_it_returns(
    settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    tmp_path: Path,
) -> None:
    from serving.worker.loop import run_worker

    registry_settings = Settings(_env_file=None, home=tmp_path / "mlflow", mlflow_port=_free_port())
    with running_tracking_server(registry_settings) as uri:
        registered = register_tiny_digits(uri, f"outage-digits-{secrets.token_hex(3)}")
    ids = queue_jobs(sessions, developer, make_model(registered.name, registered.version))
    worker_settings = Settings(
        **{
            **settings.model_dump(),
            "_env_file": None,
            "mlflow_tracking_uri": uri,
            "dependency_timeout_seconds": 2,
            "job_retry_base_seconds": 0.1,
            "queue_poll_seconds": 0.1,
            "worker_heartbeat_seconds": 0.5,
        }
    )
    stop = threading.Event()
    # No source: the worker builds its registry source and bounds MLflow's client, as in production.
    worker = threading.Thread(target=run_worker, args=(worker_settings, stop), daemon=True)
    worker.start()
    try:
        (job,) = wait_for(sessions, ids, _outage_seen, timeout=60)
        assert _seconds_to_first_outage(sessions, job.id) < WITHIN_SECONDS
        down = f"the MLflow registry at {uri} does not answer (ConnectError)"
        # The job's owner learns which kind of dependency is down, never its address.
        assert "the model registry does not answer; the job runs again in" in job.logs
        assert uri not in job.logs
        assert job.attempt_errors[0]["error"].startswith(down)  # for operators
        assert job.status in (JobStatus.queued, JobStatus.running), "never failed"
        unhealthy = _worker(sessions, lambda w: w.status == WorkerStatus.unhealthy)
        assert unhealthy.status_detail == down

        with running_tracking_server(registry_settings):
            (job,) = wait_for(sessions, ids, has_ended, timeout=120)
            assert job.status == JobStatus.succeeded, job.error
            assert job.attempt == 1, "the outage spent no attempt"
            assert job.attempt_errors and all(entry["outage"] for entry in job.attempt_errors)
            _worker(sessions, _is_healthy)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_store_that_cannot_be_written_sends_the_job_back_until_it_can(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    store.write_text("a file where the store's folder should be")
    ids = queue_jobs(sessions, developer, digits_model)
    start_worker(storage_path=store, dependency_timeout_seconds=2)

    (job,) = wait_for(sessions, ids, _outage_seen, timeout=60)
    assert _seconds_to_first_outage(sessions, job.id) < WITHIN_SECONDS
    down = f"the artifact store folder {store} cannot be written (File exists)"
    assert "the artifact store does not answer; the job runs again in" in job.logs
    assert str(store) not in job.logs
    unhealthy = _worker(sessions, lambda w: w.status == WorkerStatus.unhealthy)
    assert unhealthy.status_detail == down

    store.unlink()
    store.mkdir()
    (job,) = wait_for(sessions, ids, has_ended, timeout=60)
    assert job.status == JobStatus.succeeded, job.error
    assert job.attempt == 1
    assert (store / job.output["images"][0]["key"]).is_file()
    _worker(sessions, _is_healthy)


def test_outages_spend_attempts_only_past_their_bound(
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
    job_effects: JobEffects,
) -> None:
    with session_scope(sessions) as session:
        job = Job(
            user_id=developer.user_id,
            model_id=catalog_model.id,
            model_version="1",
            input={"digit": 1, "num_images": 1, "seed": 0},
            max_attempts=1,
        )
        transitions.enqueue(session, job)
    now = utcnow()
    error = "the MLflow registry at http://mlflow:5000 does not answer (ConnectError)"
    for outage in range(1, retry.OUTAGE_RETRIES + 2):
        now += timedelta(hours=1)  # past any backoff
        with session_scope(sessions) as session:
            (claim,) = claim_batch(
                session, "w1", job_effects, max_images=1, lease_seconds=30, now=now
            )
            transitions.retry_after_outage(
                session, claim, error, job_effects, retry_base_seconds=2, now=now
            )
        with sessions() as session:
            job = session.get_one(Job, claim.job_id)
        if outage <= retry.OUTAGE_RETRIES:
            assert (job.status, job.attempt) == (JobStatus.queued, 0), outage
            delay = min(2 * 2 ** (outage - 1), retry.OUTAGE_DELAY_CAP_SECONDS)
            assert delay <= (job.run_after - now).total_seconds() <= 1.5 * delay
    # One outage too many spends the job's only attempt: it fails, naming the dependency.
    assert (job.status, job.error) == (JobStatus.failed, error)
    assert len(job.attempt_errors) == retry.OUTAGE_RETRIES + 1
    assert isinstance(job.completed_at, datetime)
