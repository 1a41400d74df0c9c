"""A job's event stream and its log: what the API streams as server-sent events.

Events (status, progress, log, output, done) are inserted at commit, after the job row was
updated in the same transaction, so the row lock orders a job's events by commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session

from goshen.db.models import Job, JobEvent, utcnow
from goshen.db.notifications import JOB_EVENTS_CHANNEL, notify
from goshen.db.pending_rows import insert_at_commit

MAX_LOG_CHARACTERS = 1_000_000  # per job; what comes later is dropped

Entry = tuple[str, Any]  # what a running job reports: ("progress", (step, total)) or ("log", line)


def add_event(session: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
    """Append one event to a job's stream at commit; the caller has locked the job row first."""
    row = {"job_id": job_id, "type": kind, "data": data, "created_at": utcnow()}
    insert_at_commit(session, JobEvent, row)
    notify(session, JOB_EVENTS_CHANNEL, job_id)


def log_line(session: Session, job: Job, message: str) -> None:
    """A queue-made log line on a locked job: into its logs and its event stream."""
    job.logs = f"{job.logs}{message}\n"
    session.flush()
    add_event(session, job.id, "log", {"message": message})


def progress(step: int, total: int) -> dict[str, Any]:
    return {"step": step, "total": total, "percentage": round(100 * step / total, 1)}


def entry_values(entries: Sequence[Entry]) -> dict[str, Any]:
    """The job columns that report entries change: the latest progress, the appended logs."""
    values: dict[str, Any] = {}
    steps = [value for kind, value in entries if kind == "progress"]
    lines = [value for kind, value in entries if kind == "log"]
    if steps:
        values["progress"] = progress(*steps[-1])
    if lines:
        text = "".join(f"{line}\n" for line in lines)
        # Job.logs with the lines added, capped at MAX_LOG_CHARACTERS, in one SQL expression.
        values["logs"] = func.substr(Job.logs + text, 1, MAX_LOG_CHARACTERS)
    return values


def entry_events(session: Session, job_id: str, entries: Sequence[Entry]) -> None:
    """One event per report entry, in order."""
    for kind, value in entries:
        data = progress(*value) if kind == "progress" else {"message": value}
        add_event(session, job_id, kind, data)
