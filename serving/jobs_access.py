"""Reading jobs and their events from the API, and waiting for a job to end."""

from __future__ import annotations

import time

from fastapi import FastAPI
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from goshen.db.models import Job, JobEvent
from serving.queue import TERMINAL

MAX_EVENTS_PER_READ = 500


def load_job(app: FastAPI, job_id: str) -> Job:
    """The job as committed now, read in a short session of its own."""
    with app.state.read_sessionmaker() as session:
        job = session.get(Job, job_id)
        assert job is not None, "jobs are deleted only with their user"
        return job


def events_after(app: FastAPI, job_id: str, after: int) -> list[JobEvent]:
    """The job's events with ids above `after`, oldest first."""
    with app.state.read_sessionmaker() as session:
        return list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after)
                .order_by(JobEvent.id)
                .limit(MAX_EVENTS_PER_READ)
            )
        )


async def wait_until_done(app: FastAPI, job_id: str, deadline: float) -> None:
    """Return once the job has ended or the monotonic `deadline` has passed."""
    with app.state.job_watcher.watching(job_id) as waiter:
        while True:
            job = await run_in_threadpool(load_job, app, job_id)
            remaining = deadline - time.monotonic()
            if job.status in TERMINAL or remaining <= 0:
                return
            await waiter.changed(remaining)
