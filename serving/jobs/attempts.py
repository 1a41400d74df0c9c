"""Starting the attempts of a claim's jobs: the job rows say running, leased to the worker.

On PostgreSQL one UPDATE starts every job of the claim (the per-job values travel as arrays), and
the loaded rows are given the values it wrote, so nothing is read back; on SQLite (one embedded
worker) the ORM flushes the changes.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from goshen.db.models import Job, JobStatus, UTCDateTime

_START = text(
    """
    UPDATE jobs SET
        status = 'running',
        attempt = jobs.attempt + 1,
        claim_token = v.token,
        lease_owner = :worker,
        lease_expires_at = :expires,
        started_at = :now,
        queue_seconds = v.queue_seconds,
        progress = NULL
    FROM unnest(CAST(:ids AS text[]), CAST(:tokens AS text[]), CAST(:queued AS float8[]))
        AS v(id, token, queue_seconds)
    WHERE jobs.id = v.id
    """
).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("expires", type_=UTCDateTime()))


def start(
    session: Session, jobs: Sequence[Job], worker_id: str, lease_seconds: float, now: datetime
) -> dict[str, str]:
    """Start an attempt of each job (locked by the caller's claim): the claim token of each, by
    job id. The jobs' loaded rows show the started attempt afterwards."""
    tokens = {job.id: secrets.token_hex(16) for job in jobs}
    values = {
        "status": JobStatus.running,
        "lease_owner": worker_id,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "started_at": now,
        "progress": None,
    }
    if session.get_bind().dialect.name != "postgresql":
        for job in jobs:
            for name, value in values.items():
                setattr(job, name, value)
            job.attempt += 1
            job.claim_token = tokens[job.id]
            job.queue_seconds = (now - job.created_at).total_seconds()
        session.flush()
        return tokens
    queued = [(now - job.created_at).total_seconds() for job in jobs]
    session.execute(
        _START,
        {
            "ids": [job.id for job in jobs],
            "tokens": [tokens[job.id] for job in jobs],
            "queued": queued,
            "worker": worker_id,
            "expires": values["lease_expires_at"],
            "now": now,
        },
    )
    for job, queue_seconds in zip(jobs, queued, strict=True):
        for name, value in values.items():
            set_committed_value(job, name, value)
        set_committed_value(job, "attempt", job.attempt + 1)
        set_committed_value(job, "claim_token", tokens[job.id])
        set_committed_value(job, "queue_seconds", queue_seconds)
    return tokens
