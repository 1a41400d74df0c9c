"""Admin routes for running the platform: workers and their current jobs, live stats, and every
user's datasets and training jobs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from goshen.db.models import (
    Dataset,
    DatasetStatus,
    Job,
    JobStatus,
    Model,
    TrainingJob,
    TrainingStatus,
    Worker,
    WorkerStatus,
)
from goshen.ids import id_pattern
from serving.http.dependencies import AdminPrincipal, ReadSessionDep, SettingsDep
from serving.http.pagination import Cursor, Limit, Page, paginate
from serving.jobs.stats import platform_stats
from serving.routes.training import training_job_view
from serving.schemas.admin_ops import (
    AdminDatasetPublic,
    AdminStats,
    AdminTrainingJobPublic,
    StatsWindow,
    WorkerJob,
    WorkerList,
    WorkerPublic,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"])
# A worker heartbeats every GOSHEN_WORKER_HEARTBEAT_SECONDS; missing this many beats is stale.
STALE_HEARTBEATS = 3
# Workers silent for longer (stopped, or dead and never marked so) are left out by default.
GONE_AFTER = timedelta(days=1)
MAX_WORKERS = 500
# What a worker's view copies from its row; the rest is computed.
_WORKER_COLUMNS = (
    "id",
    "host",
    "pid",
    "device_name",
    "device_memory_bytes",
    "device",
    "memory_used_bytes",
    "loaded_models",
    "status",
    "status_detail",
    "started_at",
    "heartbeat_at",
)
UserFilter = Annotated[str | None, Query(pattern=id_pattern("usr"), description="only this user's")]


@router.get("/workers")
def list_workers(
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    settings: SettingsDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_WORKERS, description=f"workers to answer, at most {MAX_WORKERS}")
    ] = MAX_WORKERS,
    include_gone: Annotated[
        bool, Query(description="also workers whose last heartbeat is over a day old")
    ] = False,
) -> WorkerList:
    """Every worker, most recent heartbeat first, with the jobs it runs now. A bounded list,
    not pages: the first `limit` workers, `has_more` when more match. By default workers silent
    for over a day (stopped, or dead and never marked so) are left out.

    A worker is `stale` when it is not stopped and its last heartbeat is older than 3 heartbeat
    intervals (GOSHEN_WORKER_HEARTBEAT_SECONDS): a live worker beats every interval even while
    it runs a batch, so a stale one is dead, hung or cut off from the database."""
    now = datetime.now(UTC)
    query = select(Worker).order_by(Worker.heartbeat_at.desc(), Worker.id).limit(limit + 1)
    if not include_gone:
        query = query.where(Worker.heartbeat_at >= now - GONE_AFTER)
    workers = session.scalars(query).all()
    stale_after = STALE_HEARTBEATS * settings.worker_heartbeat_seconds
    running = _running_jobs(session, [worker.id for worker in workers[:limit]])
    return WorkerList(
        data=[
            _worker_view(worker, now, stale_after, running.get(worker.id, []))
            for worker in workers[:limit]
        ],
        has_more=len(workers) > limit,
        stale_after_seconds=stale_after,
    )


def _running_jobs(session: Session, worker_ids: list[str]) -> dict[str, list[WorkerJob]]:
    """The running jobs each worker holds the lease of (a claim sets lease_owner to its id)."""
    if not worker_ids:
        return {}
    rows = session.execute(
        select(Job.lease_owner, Job.id, Model.name)
        .join(Model, Model.id == Job.model_id)
        .where(Job.status == JobStatus.running, Job.lease_owner.in_(worker_ids))
        .order_by(Job.id)
    ).all()
    running: dict[str, list[WorkerJob]] = {}
    for owner, job_id, model in rows:
        running.setdefault(str(owner), []).append(WorkerJob(id=job_id, model=model))
    return running


def _worker_view(
    worker: Worker, now: datetime, stale_after: float, running: list[WorkerJob]
) -> WorkerPublic:
    age = max((now - worker.heartbeat_at).total_seconds(), 0.0)
    return WorkerPublic.model_validate(
        {
            **{field: getattr(worker, field) for field in _WORKER_COLUMNS},
            "heartbeat_age_seconds": age,
            "stale": worker.status != WorkerStatus.stopped and age > stale_after,
            "running_jobs": running,
        }
    )


@router.get("/stats")
def get_stats(
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    settings: SettingsDep,
    window: Annotated[
        StatsWindow, Query(description="how far back the windowed figures look")
    ] = StatsWindow.h1,
) -> AdminStats:
    """The platform at a glance: jobs by status and queue depth, queue and run time
    percentiles, images and predictions per minute, spend, workers alive and models deployed.
    Windowed figures cover the last `window` (5m, 15m, 1h, 6h, 24h or 7d)."""
    stale_after = STALE_HEARTBEATS * settings.worker_heartbeat_seconds
    return platform_stats(session, window, stale_after)


@router.get("/datasets")
def list_all_datasets(
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    user_id: UserFilter = None,
    status: Annotated[
        DatasetStatus | None, Query(description="only datasets in this status")
    ] = None,
) -> Page[AdminDatasetPublic]:
    """Every user's datasets, newest first."""
    query = select(Dataset)
    if user_id is not None:
        query = query.where(Dataset.user_id == user_id)
    if status is not None:
        query = query.where(Dataset.status == status)
    return paginate(session, query, Dataset.id, AdminDatasetPublic, limit=limit, cursor=cursor)


@router.get("/training-jobs")
def list_all_training_jobs(
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    settings: SettingsDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    user_id: UserFilter = None,
    status: Annotated[TrainingStatus | None, Query(description="only jobs in this status")] = None,
) -> Page[AdminTrainingJobPublic]:
    """Every user's training jobs, newest first, as their owners see them plus `user_id`."""
    query = select(TrainingJob)
    if user_id is not None:
        query = query.where(TrainingJob.user_id == user_id)
    if status is not None:
        query = query.where(TrainingJob.status == status)

    def render(jobs: Sequence[TrainingJob]) -> list[AdminTrainingJobPublic]:
        return [
            AdminTrainingJobPublic(
                **training_job_view(job, settings).model_dump(), user_id=job.user_id
            )
            for job in jobs
        ]

    return paginate(
        session,
        query,
        TrainingJob.id,
        AdminTrainingJobPublic,
        limit=limit,
        cursor=cursor,
        render=render,
    )
