"""Waiting on a job without polling it (PostgreSQL): a waiter whose notification never came is
still woken, by the listener's sweep for newer events, or, when the LISTEN connection was lost,
once it has been reopened. The waiters' own poll is set far off, so only these can wake them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import Job, JobEvent, Model
from goshen.db.notifications import is_postgres
from serving.jobs import transitions, watch
from serving.jobs.watch import JobWatcher
from tests.fixtures.accounts import Account

WOKEN_WITHIN_SECONDS = 15.0


@pytest.fixture
def job_id(
    database_url: str, sessions: sessionmaker[Session], developer: Account, catalog_model: Model
) -> str:
    if not is_postgres(database_url):
        pytest.skip("SQLite has no notifications: its waiters poll")
    with session_scope(sessions) as session:
        job = Job(
            user_id=developer.user_id,
            model_id=catalog_model.id,
            model_version="1",
            input={"digit": 1, "num_images": 1, "seed": 0},
            batch_key="steps4",
        )
        transitions.enqueue(session, job)
        return job.id


def _write_unannounced_event(sessions: sessionmaker[Session], job_id: str) -> None:
    """An event committed with no notification: as if the notification were lost."""
    with session_scope(sessions) as session:
        session.add(JobEvent(job_id=job_id, type="log", data={"message": "quiet"}))


def _drop_listen_connections(database_url: str) -> None:
    libpq = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )


def _waits(
    database_url: str, job_id: str, meanwhile: Callable[[], None], settle: float = 3.0
) -> float:
    """Seconds from `meanwhile()` until a waiter on the job is woken. First `settle` seconds,
    long enough for the wake-ups that come anyway (the LISTEN connection opening, the first
    sweep seeing the job), which are then forgotten: only `meanwhile` can wake it after."""

    async def scenario() -> float:
        watcher = JobWatcher(database_url)
        watcher.start()
        try:
            with watcher.watching(job_id) as waiter:
                await asyncio.sleep(settle)
                waiter.event.clear()
                started = time.monotonic()
                await asyncio.to_thread(meanwhile)
                woken = await waiter.changed(WOKEN_WITHIN_SECONDS)
                assert woken, "the waiter was not woken"
                return time.monotonic() - started
        finally:
            await asyncio.to_thread(watcher.stop)

    return asyncio.run(scenario())


def test_an_event_whose_notification_was_lost_wakes_its_waiter_at_the_next_sweep(
    database_url: str, sessions: sessionmaker[Session], job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "SWEEP_SECONDS", 0.5)
    monkeypatch.setattr(watch, "POSTGRES_POLL_SECONDS", 600.0)
    write = lambda: _write_unannounced_event(sessions, job_id)  # noqa: E731
    waited = _waits(database_url, job_id, write)
    assert waited < WOKEN_WITHIN_SECONDS


def test_waiters_read_again_when_the_listen_connection_is_lost_and_reopened(
    database_url: str, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "SWEEP_SECONDS", 600.0)
    monkeypatch.setattr(watch, "POSTGRES_POLL_SECONDS", 600.0)
    waited = _waits(database_url, job_id, lambda: _drop_listen_connections(database_url))
    assert waited < WOKEN_WITHIN_SECONDS
