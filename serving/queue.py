"""The job queue on the jobs table: enqueue, claim, lease, heartbeat, finish, retry, cancel.

- Claims lock the rows they take with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent workers
  never wait on each other or take the same job; on SQLite every transaction starts with
  BEGIN IMMEDIATE (goshen.db.engine), which serializes claims.
- Every claim sets a new claim token and a lease. Each write a worker makes on a claimed job names
  its token: once the lease was recovered and the job claimed again, the old worker's writes match
  no row (fencing) and its caller learns so from the return value.
- Expired leases are recovered: the job goes back to the queue with backoff while attempts remain,
  else it fails with every attempt's error kept.
- Events (status, progress, log, output, done) are appended after the job row is updated in the
  same transaction, so the row lock orders a job's events by commit.

Functions take a session and leave the commit to the caller, so that what one step causes (an
output, its usage event, its webhook events) commits together or not at all.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, SessionTransaction

from goshen.db import access
from goshen.db.models import Job, JobEvent, JobStatus, UsageEvent, utcnow
from goshen.errors import ConflictError
from serving.notifications import JOB_EVENTS_CHANNEL, JOBS_CHANNEL, notify

TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
MAX_LOG_CHARACTERS = 1_000_000  # per job; what comes later is dropped


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: what it needs to run it, and the token that fences its writes."""

    job_id: str
    token: str
    attempt: int
    user_id: str
    api_key_id: str | None
    model_id: str
    model_version: str | None
    input: dict[str, Any]
    created_at: datetime
    started_at: datetime
    timeout_seconds: float | None

    @property
    def images(self) -> int:
        return int(self.input.get("num_images", 1))


@dataclass(frozen=True)
class LeaseState:
    """What a heartbeat learned about a claim."""

    held: bool
    cancel_requested: bool = False


_PENDING_EVENTS = "goshen.job_events"


def add_event(session: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
    """Append one event to a job's stream at commit; the caller has locked the job row first."""
    event = {"job_id": job_id, "type": kind, "data": data, "created_at": utcnow()}
    session.info.setdefault(_PENDING_EVENTS, []).append(event)
    notify(session, JOB_EVENTS_CHANNEL, job_id)


@sqlalchemy_event.listens_for(Session, "before_commit")
def _insert_pending_events(session: Session) -> None:
    # One multi-row INSERT per transaction; the job rows stay locked until it commits, so a
    # job's events still get ids in commit order.
    pending = session.info.pop(_PENDING_EVENTS, None)
    if pending:
        session.execute(insert(JobEvent), pending)


@sqlalchemy_event.listens_for(Session, "after_soft_rollback")
def _drop_pending_events(session: Session, previous_transaction: SessionTransaction) -> None:
    # A savepoint rolled back leaves the outer transaction's events to commit with it.
    if previous_transaction.parent is None:
        session.info.pop(_PENDING_EVENTS, None)


def _log_line(session: Session, job: Job, message: str) -> None:
    """A queue-made log line on a locked job: into its logs and its event stream."""
    job.logs = f"{job.logs}{message}\n"
    session.flush()
    add_event(session, job.id, "log", {"message": message})


def enqueue(session: Session, job: Job) -> Job:
    """Add a queued job; it becomes visible to workers when the caller commits."""
    job.status = JobStatus.queued
    session.add(job)
    session.flush()
    add_event(session, job.id, "status", {"status": JobStatus.queued.value})
    notify(session, JOBS_CHANNEL)
    return job


def _runnable(now: datetime):  # type: ignore[no-untyped-def]
    return select(Job).where(Job.status == JobStatus.queued, Job.run_after <= now)


def _oldest_first(query):  # type: ignore[no-untyped-def]
    return query.order_by(Job.priority.desc(), Job.run_after, Job.id)


def claim_batch(
    session: Session,
    worker_id: str,
    *,
    max_images: int,
    lease_seconds: float,
    now: datetime | None = None,
) -> list[Claim]:
    """Claim the next runnable job and, up to `max_images` images in all, queued jobs that may
    share its batch (same model, version and batch key). Empty when nothing is runnable."""
    now = now or utcnow()
    batch = _head_group(session, max_images, now)
    if not batch:
        # The head's whole group is taken by other workers: the next free job, then its group.
        first = session.scalars(
            _oldest_first(_runnable(now)).limit(1).with_for_update(skip_locked=True)
        ).first()
        if first is None:
            return []
        batch = [first, *_compatible(session, first, max_images - _images(first), now)]
    return _start_attempts(session, batch, worker_id, lease_seconds, now)


def _head_group(session: Session, max_images: int, now: datetime) -> list[Job]:
    """In one query: free jobs of the queue head's group (model, version, batch key), oldest
    first, within `max_images` images; the first is always taken, whatever its size."""
    head = (
        _oldest_first(
            select(Job.model_id, Job.model_version, Job.batch_key).where(
                Job.status == JobStatus.queued, Job.run_after <= now
            )
        )
        .limit(1)
        .subquery()
    )
    group = _oldest_first(
        _runnable(now).where(
            Job.model_id == head.c.model_id,
            Job.model_version.is_not_distinct_from(head.c.model_version),
            Job.batch_key.is_not_distinct_from(head.c.batch_key),
        )
    )
    picked: list[Job] = []
    room = max_images
    locked = group.limit(max_images).with_for_update(skip_locked=True, of=Job)
    for job in session.scalars(locked):
        if not picked or (job.batch_key is not None and _images(job) <= room):
            picked.append(job)
            room -= _images(job)
        if room <= 0 or picked[0].batch_key is None:
            break
    return picked


def claim_compatible(
    session: Session,
    worker_id: str,
    job_id: str,
    *,
    max_images: int,
    lease_seconds: float,
    now: datetime | None = None,
) -> list[Claim]:
    """Claim more queued jobs that may join the batch of `job_id`, up to `max_images` images."""
    now = now or utcnow()
    first = session.get(Job, job_id)
    if first is None:
        return []
    batch = _compatible(session, first, max_images, now)
    return _start_attempts(session, batch, worker_id, lease_seconds, now)


def _compatible(session: Session, first: Job, room: int, now: datetime) -> list[Job]:
    """Runnable jobs that may share `first`'s batch, oldest first, within `room` images."""
    if first.batch_key is None or room <= 0:
        return []
    same_version = (
        Job.model_version.is_(None)
        if first.model_version is None
        else Job.model_version == first.model_version
    )
    query = _oldest_first(
        _runnable(now).where(
            Job.id != first.id,
            Job.model_id == first.model_id,
            Job.batch_key == first.batch_key,
            same_version,
        )
    )
    picked = []
    for job in session.scalars(query.limit(room).with_for_update(skip_locked=True)):
        if _images(job) <= room:
            picked.append(job)
            room -= _images(job)
    return picked


def _images(job: Job) -> int:
    return int(job.input.get("num_images", 1))


def _start_attempts(
    session: Session, jobs: Sequence[Job], worker_id: str, lease_seconds: float, now: datetime
) -> list[Claim]:
    """Start an attempt of each claimed (locked) job: one flush, then their events."""
    for job in jobs:
        job.status = JobStatus.running
        job.attempt += 1
        job.claim_token = secrets.token_hex(16)
        job.lease_owner = worker_id
        job.lease_expires_at = now + timedelta(seconds=lease_seconds)
        job.started_at = now
        job.queue_seconds = (now - job.created_at).total_seconds()
        job.progress = None
    session.flush()
    for job in jobs:
        add_event(session, job.id, "status", {"status": "running", "attempt": job.attempt})
    return [
        Claim(
            job_id=job.id,
            token=job.claim_token,
            attempt=job.attempt,
            user_id=job.user_id,
            api_key_id=job.api_key_id,
            model_id=job.model_id,
            model_version=job.model_version,
            input=dict(job.input),
            created_at=job.created_at,
            started_at=now,
            timeout_seconds=job.timeout_seconds,
        )
        for job in jobs
    ]


def _fenced_where(claim: Claim):  # type: ignore[no-untyped-def]
    return (
        Job.id == claim.job_id,
        Job.claim_token == claim.token,
        Job.status == JobStatus.running,
    )


def _fenced(claim: Claim):  # type: ignore[no-untyped-def]
    """An UPDATE of the claimed job that matches nothing once the claim is stale."""
    return update(Job).where(*_fenced_where(claim))


def heartbeat(
    session: Session, claim: Claim, lease_seconds: float, now: datetime | None = None
) -> LeaseState:
    """Extend the claim's lease; says whether it is still held and whether cancel was asked."""
    now = now or utcnow()
    row = session.execute(
        _fenced(claim)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(Job.cancel_requested)
    ).first()
    return LeaseState(held=False) if row is None else LeaseState(True, bool(row[0]))


def progress(step: int, total: int) -> dict[str, Any]:
    return {"step": step, "total": total, "percentage": round(100 * step / total, 1)}


Entry = tuple[str, Any]  # ("progress", (step, total)) or ("log", line)


def _entry_values(entries: Sequence[Entry]) -> dict[str, Any]:
    """The job columns that report entries change: the latest progress, the appended logs."""
    values: dict[str, Any] = {}
    steps = [value for kind, value in entries if kind == "progress"]
    lines = [value for kind, value in entries if kind == "log"]
    if steps:
        values["progress"] = progress(*steps[-1])
    if lines:
        values["logs"] = _appended(lines)
    return values


def _entry_events(session: Session, job_id: str, entries: Sequence[Entry]) -> None:
    for kind, value in entries:
        data = progress(*value) if kind == "progress" else {"message": value}
        add_event(session, job_id, kind, data)


def report(session: Session, claim: Claim, entries: Sequence[Entry]) -> LeaseState:
    """What a running job did, in order: ("progress", (step, total)) and ("log", line) entries
    become one fenced update of the job (latest progress, appended logs) and one event each."""
    values = _entry_values(entries)
    row = session.execute(
        _fenced(claim).values(**values).returning(Job.cancel_requested)
        if values
        else select(Job.cancel_requested).where(*_fenced_where(claim))
    ).first()
    if row is None:
        return LeaseState(held=False)
    _entry_events(session, claim.job_id, entries)
    return LeaseState(True, bool(row[0]))


def record_progress(session: Session, claim: Claim, steps: Sequence[tuple[int, int]]) -> LeaseState:
    """Denoising steps done, in order; see `report`."""
    return report(session, claim, [("progress", step) for step in steps])


def append_logs(session: Session, claim: Claim, lines: Sequence[str]) -> bool:
    """Append log lines to the job and its stream; False when the claim is stale."""
    return report(session, claim, [("log", line) for line in lines]).held


def _appended(lines: Sequence[str]):  # type: ignore[no-untyped-def]
    """Job.logs with `lines` added, capped at MAX_LOG_CHARACTERS, in one SQL expression."""
    text = "".join(f"{line}\n" for line in lines)
    return func.substr(Job.logs + text, 1, MAX_LOG_CHARACTERS)


@dataclass(frozen=True)
class Completion:
    """What a finished run produced, for the job row and its usage event."""

    output: dict[str, Any]
    run_seconds: float
    device: str
    peak_memory_bytes: int | None
    images: int
    compute_seconds: float
    quantity: float
    unit: str
    cost_micros: int


def complete(
    session: Session,
    claim: Claim,
    done: Completion,
    entries: Sequence[Entry] = (),
    now: datetime | None = None,
) -> Job | None:
    """Mark the job succeeded with its output and meter it once; None when the claim is stale.

    `entries` are its last report entries (see `report`), written in the same update.
    """
    now = now or utcnow()
    job = session.scalars(
        _fenced(claim)
        .values(
            **_entry_values(entries),
            status=JobStatus.succeeded,
            output=done.output,
            completed_at=now,
            run_seconds=done.run_seconds,
            device=done.device,
            peak_memory_bytes=done.peak_memory_bytes,
            cost_micros=done.cost_micros,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(Job),
        execution_options={"populate_existing": True},
    ).first()
    if job is None:
        return None
    access.insert_once(
        session,
        UsageEvent,
        {
            "user_id": claim.user_id,
            "api_key_id": claim.api_key_id,
            "model_id": claim.model_id,
            "job_id": claim.job_id,
            "kind": "generation",
            "quantity": done.quantity,
            "unit": done.unit,
            "cost_micros": done.cost_micros,
            "images": done.images,
            "seconds": done.compute_seconds,
        },
        ("job_id", "kind"),
    )
    _entry_events(session, claim.job_id, entries)
    add_event(session, claim.job_id, "output", done.output)
    _finish_events(session, claim.job_id, JobStatus.succeeded)
    return job


def _finish_events(session: Session, job_id: str, status: JobStatus, **extra: Any) -> None:
    add_event(session, job_id, "status", {"status": status.value, **extra})
    add_event(session, job_id, "done", {"status": status.value, **extra})


def retry_delay(attempt: int, base_seconds: float, rng: random.Random | None = None) -> float:
    """Seconds before retry `attempt` (1 = the first): base·2^(attempt-1), times 1 to 1.5."""
    return base_seconds * 2 ** (attempt - 1) * (rng or random).uniform(1.0, 1.5)


def fail(
    session: Session,
    claim: Claim,
    error: str,
    *,
    retryable: bool,
    retry_base_seconds: float,
    detail: str | None = None,
    now: datetime | None = None,
) -> Job | None:
    """End this attempt with `error`: back to the queue with backoff while attempts remain and
    the error is retryable (unless a cancel was asked meanwhile), else failed. `error` is what
    the user sees; `detail` (default: the same) is kept with the attempt for operators. None
    when the claim is stale."""
    now = now or utcnow()
    job = _locked_if_held(session, claim)
    if job is None:
        return None
    _keep_attempt_error(job, detail or error, now)
    if retryable and job.attempt < job.max_attempts:
        _retry_later(
            session, job, f"attempt {claim.attempt} failed: {error}", retry_base_seconds, now
        )
    else:
        _end_with(session, job, JobStatus.failed, now, error=error)
    return job


def _retry_later(
    session: Session, job: Job, why: str, retry_base_seconds: float, now: datetime
) -> None:
    """Back to the queue after the attempt's backoff; a job whose cancel was asked ends instead."""
    if job.cancel_requested:
        _end_with(session, job, JobStatus.canceled, now)
        return
    delay = retry_delay(job.attempt, retry_base_seconds)
    _requeue(job, now + timedelta(seconds=delay))
    _log_line(session, job, f"{why}; retrying in {delay:.1f} s")
    add_event(session, job.id, "status", {"status": "queued", "retry_in_seconds": delay})


def _end_with(
    session: Session, job: Job, status: JobStatus, now: datetime, *, error: str | None = None
) -> None:
    _end(job, status, now, error=error)
    session.flush()
    extra = {"error": error} if error else {}
    _finish_events(session, job.id, status, **extra)


def _locked_if_held(session: Session, claim: Claim) -> Job | None:
    job = session.scalars(
        select(Job)
        .where(
            Job.id == claim.job_id,
            Job.claim_token == claim.token,
            Job.status == JobStatus.running,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    return job


def _keep_attempt_error(job: Job, error: str, now: datetime) -> None:
    entry = {"attempt": job.attempt, "error": error, "at": now.isoformat()}
    job.attempt_errors = [*job.attempt_errors, entry]


def _requeue(job: Job, run_after: datetime) -> None:
    job.status = JobStatus.queued
    job.run_after = run_after
    job.claim_token = None
    job.lease_owner = None
    job.lease_expires_at = None
    job.progress = None


def _end(job: Job, status: JobStatus, now: datetime, *, error: str | None = None) -> None:
    job.status = status
    job.error = error
    job.completed_at = now
    if job.started_at is not None:
        job.run_seconds = (now - job.started_at).total_seconds()
    job.claim_token = None
    job.lease_owner = None
    job.lease_expires_at = None


def release(
    session: Session,
    claim: Claim,
    reason: str,
    *,
    alone: bool = False,
    now: datetime | None = None,
) -> bool:
    """Give a claimed job back to the queue (a stopping worker; a batch that failed as a whole):
    the attempt does not count. With `alone`, it runs in a batch of its own next time. A job
    whose cancel was asked ends canceled instead. False when the claim is stale."""
    now = now or utcnow()
    job = _locked_if_held(session, claim)
    if job is None:
        return False
    if job.cancel_requested:
        _end_with(session, job, JobStatus.canceled, now)
        return True
    job.attempt -= 1
    if alone:
        job.batch_key = None
    _requeue(job, now)
    _log_line(session, job, f"released: {reason}")
    add_event(session, job.id, "status", {"status": "queued"})
    notify(session, JOBS_CHANNEL)
    return True


def confirm_canceled(session: Session, claim: Claim, now: datetime | None = None) -> Job | None:
    """The worker stopped a job whose cancel was requested: it ends canceled, uncharged."""
    job = _locked_if_held(session, claim)
    if job is None:
        return None
    _end_with(session, job, JobStatus.canceled, now or utcnow())
    return job


def request_cancel(session: Session, job_id: str, now: datetime | None = None) -> Job:
    """Cancel a job: a queued one ends at once, a running one stops at its next step."""
    job = session.scalars(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if job.status in TERMINAL:
        raise ConflictError(f"job {job.id} already ended {job.status}; there is nothing to cancel")
    if job.status == JobStatus.queued:
        _end_with(session, job, JobStatus.canceled, now or utcnow())
    elif not job.cancel_requested:
        job.cancel_requested = True
        _log_line(session, job, "cancel requested")
    return job


def recover_stalled(
    session: Session, *, retry_base_seconds: float, now: datetime | None = None, limit: int = 100
) -> list[Job]:
    """Running jobs whose lease expired (their worker died or hung): back to the queue with
    backoff while attempts remain, else failed; a job whose cancel was asked ends canceled."""
    now = now or utcnow()
    stalled = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.running, Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for job in stalled:
        # Which worker it was is for operators (attempt_errors); users see what happened.
        _keep_attempt_error(job, f"worker {job.lease_owner} stopped renewing its lease", now)
        lost = f"the worker running attempt {job.attempt} stopped responding"
        if job.attempt < job.max_attempts:
            _retry_later(session, job, lost, retry_base_seconds, now)
        else:
            failed = JobStatus.canceled if job.cancel_requested else JobStatus.failed
            error = None if job.cancel_requested else f"{lost}; no attempts left"
            _end_with(session, job, failed, now, error=error)
    if stalled:
        notify(session, JOBS_CHANNEL)
    return list(stalled)
