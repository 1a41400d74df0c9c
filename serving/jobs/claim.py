"""Workers claim batches of queued jobs: the head of the queue and what may share its batch.

Claims lock the rows they take with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent workers
never wait on each other or take the same job; on SQLite every transaction starts with
BEGIN IMMEDIATE (goshen.db.engine), which serializes claims. Every claim sets a new claim token
and a lease: the token fences the worker's writes (serving.jobs.lease).

Model affinity (GOSHEN_WORKER_AFFINITY_SECONDS): a worker takes queued jobs for the models it has
loaded first, and leaves a job for a model it has not loaded to another live worker that has it,
but only for that many seconds after the job became runnable: then the job is the oldest like any
other and the first free worker takes it, so nothing waits longer. Without such another worker
(one worker alone, or a model nobody has loaded) a claim is the plain oldest-first one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple

from sqlalchemy import ColumnElement, Select, or_, select
from sqlalchemy.orm import Session

from goshen.db.models import Job, JobStatus, Worker, WorkerStatus, in_sql, utcnow
from serving.jobs import attempts
from serving.jobs.effects import JobEffects


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
    # What joins the worker's log lines and spans to the API's (goshen.logs, goshen.tracing).
    request_id: str | None = None
    traceparent: str | None = None
    # Jobs with the same key (and model version) may share a batch; None: the job runs alone.
    batch_key: str | None = None

    @property
    def images(self) -> int:
        return int(self.input.get("num_images", 1))


@dataclass(frozen=True)
class Affinity:
    """The models this worker has loaded (`own`) and those only other live workers have loaded
    (`held_back`): jobs for the latter wait up to `seconds` for those workers."""

    own: frozenset[str]
    held_back: frozenset[str]
    seconds: float


def affinity_for(
    session: Session,
    worker_id: str,
    own: frozenset[str],
    *,
    seconds: float,
    stale_after_seconds: float,
    now: datetime | None = None,
) -> Affinity | None:
    """What a claim by `worker_id` (which has the models `own` loaded) should prefer and hold
    back; None (a plain claim) when affinity is off or no other live worker has a model this one
    lacks. Live: idle, busy or unhealthy, heartbeat at most `stale_after_seconds` old."""
    if seconds <= 0:
        return None
    now = now or utcnow()
    rows = session.scalars(
        select(Worker.loaded_models).where(
            Worker.id != worker_id,
            Worker.status.in_((WorkerStatus.idle, WorkerStatus.busy, WorkerStatus.unhealthy)),
            Worker.heartbeat_at >= now - timedelta(seconds=stale_after_seconds),
        )
    )
    others = {
        str(entry["model_id"])
        for loaded in rows
        for entry in loaded or ()
        if isinstance(entry, dict) and entry.get("model_id")
    }
    held_back = frozenset(others - own)
    return Affinity(own, held_back, seconds) if held_back else None


Columns = TypeVarTuple("Columns")


def _runnable(query: Select[*Columns], now: datetime) -> Select[*Columns]:
    return query.where(Job.status == in_sql(JobStatus.queued), Job.run_after <= now)


def _oldest_first(query: Select[*Columns]) -> Select[*Columns]:
    return query.order_by(Job.priority.desc(), Job.run_after, Job.id)


def claim_batch(
    session: Session,
    worker_id: str,
    effects: JobEffects,
    *,
    max_images: int,
    lease_seconds: float,
    now: datetime | None = None,
    affinity: Affinity | None = None,
) -> list[Claim]:
    """Claim the next runnable job and, up to `max_images` images in all, queued jobs that may
    share its batch (same model, version and batch key). Empty when nothing is runnable.

    With `affinity` (affinity_for), jobs for its held-back models are not taken until they
    have been runnable `affinity.seconds`; and unless the oldest job left has waited that long,
    a job for a model this worker has loaded goes first."""
    now = now or utcnow()
    if affinity is None:
        batch = _oldest_batch(session, max_images, now)
    else:
        batch = _affine_batch(session, affinity, max_images, now)
    if not batch:
        return []
    return _start_attempts(session, batch, worker_id, effects, lease_seconds, now)


def claim_affine(
    session: Session,
    worker_id: str,
    effects: JobEffects,
    *,
    own: frozenset[str],
    affinity_seconds: float,
    stale_after_seconds: float,
    max_images: int,
    lease_seconds: float,
) -> list[Claim]:
    """claim_batch with model affinity for a worker that has the models `own` loaded: the
    plain oldest-first claim unless another live worker has a model this one lacks (one small
    read of the workers table, before any job row is locked), the affine claim then."""
    now = utcnow()
    affinity = None
    if affinity_seconds > 0:
        affinity = affinity_for(
            session,
            worker_id,
            own,
            seconds=affinity_seconds,
            stale_after_seconds=stale_after_seconds,
            now=now,
        )
    if affinity is None:
        batch = _oldest_batch(session, max_images, now)
    else:
        batch = _affine_batch(session, affinity, max_images, now)
    if not batch:
        return []
    return _start_attempts(session, batch, worker_id, effects, lease_seconds, now)


def _oldest_batch(
    session: Session, max_images: int, now: datetime, where: ColumnElement[bool] | None = None
) -> list[Job]:
    """The oldest free job (among those `where` allows) and what may share its batch."""
    batch = _head_group(session, max_images, now, where)
    if batch:
        return batch
    # The head's whole group is taken by other workers: the next free job, then its group.
    query = _runnable(select(Job), now)
    if where is not None:
        query = query.where(where)
    first = session.scalars(_oldest_first(query).limit(1).with_for_update(skip_locked=True)).first()
    if first is None:
        return []
    return [first, *_compatible(session, first, max_images - _images(first), now)]


def _affine_batch(
    session: Session, affinity: Affinity, max_images: int, now: datetime
) -> list[Job]:
    """Own models first, held-back ones only once overdue; the oldest first once one is."""
    cutoff = now - timedelta(seconds=affinity.seconds)
    allowed = or_(Job.model_id.not_in(affinity.held_back), Job.run_after <= cutoff)
    head = session.execute(
        _oldest_first(
            _runnable(select(Job.model_id, (Job.run_after <= cutoff).label("overdue")), now)
        )
        .where(allowed)
        .limit(1)
    ).first()
    if head is None:
        return []
    if affinity.own and head.model_id not in affinity.own and not head.overdue:
        own = _oldest_batch(session, max_images, now, Job.model_id.in_(affinity.own))
        if own:
            return own
    return _oldest_batch(session, max_images, now, allowed)


def _head_group(
    session: Session, max_images: int, now: datetime, where: ColumnElement[bool] | None = None
) -> list[Job]:
    """In one query: free jobs of the queue head's group (model, version, batch key), oldest
    first, within `max_images` images; the first is always taken, whatever its size. `where`
    narrows the jobs the head is chosen from."""
    candidates = _runnable(select(Job.model_id, Job.model_version, Job.batch_key), now)
    if where is not None:
        candidates = candidates.where(where)
    head = _oldest_first(candidates).limit(1).subquery()
    group = _oldest_first(
        _runnable(select(Job), now).where(
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
    effects: JobEffects,
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
    return _start_attempts(session, batch, worker_id, effects, lease_seconds, now)


def _compatible(session: Session, first: Job, room: int, now: datetime) -> list[Job]:
    """Runnable jobs that may share `first`'s batch, oldest first, within `room` images."""
    if first.batch_key is None or room <= 0:
        return []
    query = _oldest_first(
        _runnable(select(Job), now).where(
            Job.id != first.id,
            Job.model_id == first.model_id,
            Job.batch_key == first.batch_key,
            _version_is(first.model_version),
        )
    )
    picked = []
    for job in session.scalars(query.limit(room).with_for_update(skip_locked=True)):
        if _images(job) <= room:
            picked.append(job)
            room -= _images(job)
    return picked


def split_batches(claims: Sequence[Claim], max_images: int) -> list[list[Claim]]:
    """`claims` (one model and version) in batches, in order: a job joins the first batch
    with its batch key that has room for its images, else starts one; a job without a key
    runs alone (the batches a worker's prefetch claims: serving.worker.loop)."""
    batches: list[list[Claim]] = []
    room: list[int] = []
    for claim in claims:
        for index, batch in enumerate(batches):
            key = batch[0].batch_key
            if key is not None and key == claim.batch_key and claim.images <= room[index]:
                batch.append(claim)
                room[index] -= claim.images
                break
        else:
            batches.append([claim])
            room.append(max_images - claim.images)
    return batches


def _version_is(version: str | None) -> ColumnElement[bool]:
    return Job.model_version.is_(None) if version is None else Job.model_version == version


def _images(job: Job) -> int:
    return int(job.input.get("num_images", 1))


def _start_attempts(
    session: Session,
    jobs: Sequence[Job],
    worker_id: str,
    effects: JobEffects,
    lease_seconds: float,
    now: datetime,
) -> list[Claim]:
    """Start an attempt of each claimed (locked) job, then write what starting causes."""
    tokens = attempts.start(session, jobs, worker_id, lease_seconds, now)
    effects.started(session, jobs)
    return [
        Claim(
            job_id=job.id,
            token=tokens[job.id],
            attempt=job.attempt,
            user_id=job.user_id,
            api_key_id=job.api_key_id,
            model_id=job.model_id,
            model_version=job.model_version,
            input=dict(job.input),
            created_at=job.created_at,
            started_at=now,
            timeout_seconds=job.timeout_seconds,
            request_id=job.request_id,
            traceparent=job.traceparent,
            batch_key=job.batch_key,
        )
        for job in jobs
    ]
