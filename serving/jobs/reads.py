"""Reading jobs and their events from the API, and waiting for a job to end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from goshen.db.models import Job, JobEvent
from serving.http.streams import StreamHub
from serving.jobs.transitions import TERMINAL
from serving.jobs.watch import JobWatcher

MAX_EVENTS_PER_READ = 500


def load_job(reads: sessionmaker[Session], job_id: str) -> Job:
    """The job as committed now, read in a short session of its own."""
    with reads() as session:
        job = session.get(Job, job_id)
        assert job is not None, "jobs are deleted only with their user"
        return job


def events_after(reads: sessionmaker[Session], job_id: str, after: int) -> list[JobEvent]:
    """The job's events with ids above `after`, oldest first."""
    with reads() as session:
        return list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after)
                .order_by(JobEvent.id)
                .limit(MAX_EVENTS_PER_READ)
            )
        )


async def wait_until_done(
    reads: sessionmaker[Session],
    watcher: JobWatcher,
    job_id: str,
    deadline: float,
    hub: StreamHub | None = None,
) -> None:
    """Return once the job has ended, the monotonic `deadline` has passed, or (with `hub`) the
    server begins to stop: the caller then answers with the job as it is, at once."""
    with watcher.watching(job_id) as waiter, _stopping_wakes(hub, waiter.event):
        while True:
            job = await run_in_threadpool(load_job, reads, job_id)
            remaining = deadline - time.monotonic()
            if job.status in TERMINAL or remaining <= 0 or (hub is not None and hub.closing):
                return
            await waiter.changed(remaining)


@contextmanager
def _stopping_wakes(hub: StreamHub | None, event: asyncio.Event) -> Iterator[None]:
    if hub is None:
        yield
        return
    with hub.open(event.set):
        yield
