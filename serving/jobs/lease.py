"""What a worker writes while it holds a claim: lease renewals, progress and log lines.

Each write names the claim's token: once the lease was recovered and the job claimed again, the
old worker's writes match no row (fencing) and it learns so from the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Update, select, update
from sqlalchemy.orm import Session

from goshen.db.models import Job, JobStatus, utcnow
from serving.jobs.claim import Claim
from serving.jobs.events import Entry, entry_events, entry_values


@dataclass(frozen=True)
class LeaseState:
    """What a heartbeat learned about a claim."""

    held: bool
    cancel_requested: bool = False


def held_by(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    """The WHERE clause of a write that only the claim's current holder may make."""
    return (
        Job.id == claim.job_id,
        Job.claim_token == claim.token,
        Job.status == JobStatus.running,
    )


def fenced_update(claim: Claim) -> Update:
    """An UPDATE of the claimed job that matches nothing once the claim is stale."""
    return update(Job).where(*held_by(claim))


def heartbeat(
    session: Session, claim: Claim, lease_seconds: float, now: datetime | None = None
) -> LeaseState:
    """Extend the claim's lease; says whether it is still held and whether cancel was asked."""
    now = now or utcnow()
    row = session.execute(
        fenced_update(claim)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(Job.cancel_requested)
    ).first()
    return LeaseState(held=False) if row is None else LeaseState(True, bool(row[0]))


def report(session: Session, claim: Claim, entries: Sequence[Entry]) -> LeaseState:
    """What a running job did, in order: ("progress", (step, total)) and ("log", line) entries
    become one fenced update of the job (latest progress, appended logs) and one event each."""
    values: dict[str, Any] = entry_values(entries)
    row = session.execute(
        fenced_update(claim).values(**values).returning(Job.cancel_requested)
        if values
        else select(Job.cancel_requested).where(*held_by(claim))
    ).first()
    if row is None:
        return LeaseState(held=False)
    entry_events(session, claim.job_id, entries)
    return LeaseState(True, bool(row[0]))
