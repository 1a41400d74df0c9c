"""A job's status changes: queued, then running, then succeeded, failed or canceled.

- Expired leases are recovered: the job goes back to the queue with backoff while attempts remain,
  else it fails with every attempt's error kept.
- An attempt that found a dependency down goes back with backoff without spending an attempt,
  a bounded number of times (serving.jobs.retry).
- Cancel: a queued job ends at once; a running one is flagged and stops at its next step.
- Every transition to an end calls `JobEffects.ended` (serving.jobs.effects), which writes what
  the end causes; nothing else here writes events beyond the queue's own status and log lines.

Functions take a session and leave the commit to the caller, so that a transition and what it
causes commit together or not at all. Writes on a claimed job are fenced by its token: for a
stale claim they change nothing and answer None (or False).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from goshen.billing import ledger
from goshen.db.models import Job, JobStatus, in_sql, utcnow
from goshen.db.notifications import JOBS_CHANNEL, notify
from goshen.errors import ConflictError
from serving.jobs.claim import Claim
from serving.jobs.effects import Completion, JobEffects
from serving.jobs.events import Entry, add_event, entry_events, entry_values, log_line
from serving.jobs.lease import fenced_update, held_by
from serving.jobs.retry import OUTAGE_RETRIES, outage_delay, requeue, retry_delay

TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


def enqueue(session: Session, job: Job) -> Job:
    """Add a queued job; it becomes visible to workers when the caller commits."""
    job.status = JobStatus.queued
    session.add(job)
    session.flush()
    add_event(session, job.id, "status", {"status": JobStatus.queued.value})
    notify(session, JOBS_CHANNEL)
    return job


def complete(
    session: Session,
    claim: Claim,
    done: Completion,
    effects: JobEffects,
    entries: Sequence[Entry] = (),
    now: datetime | None = None,
) -> Job | None:
    """Mark the job succeeded with its output; None when the claim is stale.

    `entries` are its last report entries (see serving.jobs.lease.report), written in the same
    update."""
    now = now or utcnow()
    job = session.scalars(
        fenced_update(claim)
        .values(
            **entry_values(entries),
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
    entry_events(session, claim.job_id, entries)
    effects.ended(session, job, done)
    return job


def fail(
    session: Session,
    claim: Claim,
    error: str,
    effects: JobEffects,
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
    _fail_held(
        session,
        job,
        error,
        effects,
        retryable=retryable,
        base=retry_base_seconds,
        now=now,
        detail=detail,
    )
    return job


def retry_after_outage(
    session: Session,
    claim: Claim,
    error: str,
    effects: JobEffects,
    *,
    retry_base_seconds: float,
    detail: str | None = None,
    now: datetime | None = None,
) -> Job | None:
    """End this attempt because a dependency it needed is down (`error` names it): back to the
    queue with backoff, the attempt not counted, for the job's first OUTAGE_RETRIES outages
    (serving.jobs.retry); past them it fails the attempt like any retryable error. `detail` is
    kept for operators, as in fail(). A job whose cancel was asked ends canceled. None when the
    claim is stale."""
    now = now or utcnow()
    job = _locked_if_held(session, claim)
    if job is None:
        return None
    outages = sum(1 for entry in job.attempt_errors if entry.get("outage"))
    if outages >= OUTAGE_RETRIES:
        _fail_held(
            session,
            job,
            error,
            effects,
            retryable=True,
            base=retry_base_seconds,
            now=now,
            detail=detail,
        )
        return job
    _keep_attempt_error(job, detail or error, now, outage=True)
    if job.cancel_requested:
        _end_with(session, job, JobStatus.canceled, effects, now)
        return job
    job.attempt -= 1
    delay = outage_delay(outages + 1, retry_base_seconds)
    requeue(job, now + timedelta(seconds=delay))
    line = f"{error}; the job runs again in {delay:.1f} s (an outage spends none of its attempts)"
    log_line(session, job, line)
    add_event(session, job.id, "status", {"status": "queued", "retry_in_seconds": delay})
    return job


def release(
    session: Session,
    claim: Claim,
    reason: str,
    effects: JobEffects,
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
        _end_with(session, job, JobStatus.canceled, effects, now)
        return True
    job.attempt -= 1
    if alone:
        job.batch_key = None
    requeue(job, now)
    log_line(session, job, f"released: {reason}")
    add_event(session, job.id, "status", {"status": "queued"})
    notify(session, JOBS_CHANNEL)
    return True


def confirm_canceled(
    session: Session, claim: Claim, effects: JobEffects, now: datetime | None = None
) -> Job | None:
    """The worker stopped a job whose cancel was requested: it ends canceled, uncharged."""
    job = _locked_if_held(session, claim)
    if job is None:
        return None
    _end_with(session, job, JobStatus.canceled, effects, now or utcnow())
    return job


def request_cancel(
    session: Session, job_id: str, effects: JobEffects, now: datetime | None = None
) -> Job:
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
        _end_with(session, job, JobStatus.canceled, effects, now or utcnow())
    elif not job.cancel_requested:
        job.cancel_requested = True
        log_line(session, job, "cancel requested")
    return job


def recover_stalled(
    session: Session,
    effects: JobEffects,
    *,
    retry_base_seconds: float,
    now: datetime | None = None,
    limit: int = 100,
) -> list[Job]:
    """Running jobs whose lease expired (their worker died or hung): back to the queue with
    backoff while attempts remain, else failed; a job whose cancel was asked ends canceled."""
    now = now or utcnow()
    expired = (Job.status == in_sql(JobStatus.running), Job.lease_expires_at < now)
    # Jobs that end here settle their credit, so their users' balances are locked first, as
    # every transaction that ends jobs takes them (a worker ending its batch, a cancel): the
    # stalled jobs are read unlocked, the balances of those that would end locked, then the
    # jobs. One that changed meanwhile so that it would end unlocked waits for the next pass.
    candidates = session.execute(
        select(Job.id, Job.user_id, Job.attempt, Job.max_attempts, Job.cancel_requested)
        .where(*expired)
        .order_by(Job.lease_expires_at)
        .limit(limit)
    ).all()
    if not candidates:
        return []
    locked = {
        row.user_id for row in candidates if row.attempt >= row.max_attempts or row.cancel_requested
    }
    ledger.lock_balances(session, locked)
    stalled = [
        job
        for job in session.scalars(
            select(Job)
            .where(Job.id.in_([row.id for row in candidates]), *expired)
            .order_by(Job.lease_expires_at)
            .with_for_update(skip_locked=True)
        )
        if not _ends(job) or job.user_id in locked
    ]
    for job in stalled:
        # Which worker it was is for operators (attempt_errors); users see what happened.
        _keep_attempt_error(job, f"worker {job.lease_owner} stopped renewing its lease", now)
        lost = f"the worker running attempt {job.attempt} stopped responding"
        if job.attempt < job.max_attempts:
            _retry_later(session, job, lost, effects, retry_base_seconds, now)
        elif job.cancel_requested:
            _end_with(session, job, JobStatus.canceled, effects, now)
        else:
            error = f"{lost}; no attempts left"
            _end_with(session, job, JobStatus.failed, effects, now, error=error)
    if stalled:
        notify(session, JOBS_CHANNEL)
    return list(stalled)


def _ends(job: Job) -> bool:
    """Whether recovery ends a stalled job rather than sending it back to the queue."""
    return job.attempt >= job.max_attempts or bool(job.cancel_requested)


def _retry_later(
    session: Session,
    job: Job,
    why: str,
    effects: JobEffects,
    retry_base_seconds: float,
    now: datetime,
) -> None:
    """Back to the queue after the attempt's backoff; a job whose cancel was asked ends instead."""
    if job.cancel_requested:
        _end_with(session, job, JobStatus.canceled, effects, now)
        return
    delay = retry_delay(job.attempt, retry_base_seconds)
    requeue(job, now + timedelta(seconds=delay))
    log_line(session, job, f"{why}; retrying in {delay:.1f} s")
    add_event(session, job.id, "status", {"status": "queued", "retry_in_seconds": delay})


def _fail_held(
    session: Session,
    job: Job,
    error: str,
    effects: JobEffects,
    *,
    retryable: bool,
    base: float,
    now: datetime,
    detail: str | None = None,
) -> None:
    """fail() on a job whose claim is held and locked; `base` is the retry base in seconds."""
    _keep_attempt_error(job, detail or error, now)
    if retryable and job.attempt < job.max_attempts:
        why = f"attempt {job.attempt} failed: {error}"
        _retry_later(session, job, why, effects, base, now)
    else:
        _end_with(session, job, JobStatus.failed, effects, now, error=error)


def _end_with(
    session: Session,
    job: Job,
    status: JobStatus,
    effects: JobEffects,
    now: datetime,
    *,
    error: str | None = None,
) -> None:
    """End a locked job that did not succeed, and write what that causes."""
    job.status = status
    job.error = error
    job.completed_at = now
    if job.started_at is not None:
        job.run_seconds = (now - job.started_at).total_seconds()
    job.claim_token = None
    job.lease_owner = None
    job.lease_expires_at = None
    session.flush()
    effects.ended(session, job)


def _locked_if_held(session: Session, claim: Claim) -> Job | None:
    return session.scalars(
        select(Job)
        .where(*held_by(claim))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()


def _keep_attempt_error(job: Job, error: str, now: datetime, *, outage: bool = False) -> None:
    entry: dict[str, object] = {"attempt": job.attempt, "error": error, "at": now.isoformat()}
    if outage:
        entry["outage"] = True  # counted by retry_after_outage; spends no attempt
    job.attempt_errors = [*job.attempt_errors, entry]
