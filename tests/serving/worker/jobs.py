"""Queue digits jobs the way the API does, and wait for them: what the worker tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from goshen.accounts import Principal
from goshen.db import session_scope
from goshen.db.models import ApiKey, Job, Model, User
from goshen.runtimes.inputs import DigitsInput, batch_key
from serving.jobs import transitions
from serving.jobs.submit import hold_credit
from tests.fixtures.accounts import Account

TERMINAL = {"succeeded", "failed", "canceled"}


def queue_jobs(
    sessions: sessionmaker[Session],
    account: Account,
    model: Model,
    count: int = 1,
    timeout: float | None = None,
    **model_input: Any,
) -> list[str]:
    """Queue jobs the way POST /v1/generate does (each with its credit hold), without an API in
    between."""
    checked = DigitsInput.model_validate({"digit": 3, "seed": 1} | model_input)
    ids = []
    with session_scope(sessions) as session:
        principal = Principal(
            session.get_one(User, account.user_id), session.get_one(ApiKey, account.key_id)
        )
        for _ in range(count):
            job = Job(
                user_id=account.user_id,
                api_key_id=account.key_id,
                model_id=model.id,
                model_version=model.live_version,
                input=checked.model_dump(mode="json"),
                batch_key=batch_key(checked),
                timeout_seconds=timeout,
            )
            transitions.enqueue(session, job)
            hold_credit(session, principal, job, model, checked.num_images)
            ids.append(job.id)
    return ids


def wait_for(
    sessions: sessionmaker[Session],
    job_ids: list[str],
    until: Callable[[Job], bool],
    timeout: float = 60,
) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            jobs = [session.get(Job, job_id) for job_id in job_ids]
        if all(until(job) for job in jobs):
            return jobs
        assert time.monotonic() < deadline, [(job.id, job.status, job.error) for job in jobs]
        time.sleep(0.1)


def has_ended(job: Job) -> bool:
    return job.status in TERMINAL
