"""Admin: every user's jobs. List them by status, model, owner and time, read one with its
events, and cancel one as its owner would."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BeforeValidator
from sqlalchemy import select
from sqlalchemy.orm import Session

from goshen.db.models import Job, JobEvent, JobStatus, Model
from goshen.errors import NotFoundError
from goshen.ids import id_pattern, largest_id_at, smallest_id_at
from goshen.storage import ArtifactStore
from serving.http.dependencies import (
    AdminPrincipal,
    JobEffectsDep,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from serving.http.pagination import Cursor, Limit, Page, paginate
from serving.http.paths import JobId
from serving.jobs import transitions
from serving.jobs.views import render_event_data, render_job
from serving.schemas import CatalogName, JobUrls
from serving.schemas.admin import (
    MAX_ADMIN_JOB_EVENTS,
    AdminJobDetail,
    AdminJobEvent,
    AdminJobPublic,
)

router = APIRouter(prefix="/v1/admin/jobs", tags=["admin"])

_ISO_MOMENT = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})"
)


def _iso_moment(value: Any) -> Any:
    """Only ISO 8601 text with a timezone is a moment (pydantic alone reads `0.5` as Unix time)."""
    if isinstance(value, str) and not _ISO_MOMENT.fullmatch(value):
        raise ValueError("send an ISO 8601 datetime with a timezone, e.g. 2026-12-01T10:00:00Z")
    return value


Moment = Annotated[
    AwareDatetime | None,
    BeforeValidator(_iso_moment),
    Query(description="ISO 8601 with a timezone, e.g. 2026-12-01T10:00:00Z; to the millisecond"),
]


def _model_names(session: Session, jobs: Sequence[Job]) -> dict[str, str]:
    ids = {job.model_id for job in jobs}
    return dict(session.execute(select(Model.id, Model.name).where(Model.id.in_(ids))).all())


def _admin_job(job: Job, model_name: str, store: ArtifactStore, api_url: str) -> AdminJobPublic:
    public = render_job(job, model_name, store, api_url)
    base = f"{api_url}/v1/admin/jobs/{job.id}"
    return AdminJobPublic(
        **public.model_dump(exclude={"urls"}),
        urls=JobUrls(get=base, cancel=f"{base}/cancel", stream=public.urls.stream),
        user_id=job.user_id,
        api_key_id=job.api_key_id,
        model_id=job.model_id,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        priority=job.priority,
        run_after=job.run_after,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
    )


def _get(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


@router.get("")
def list_all_jobs(
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    settings: SettingsDep,
    store: StoreDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    model: Annotated[
        CatalogName | None,
        Query(description="only this catalog entry's jobs: a plain name or `<user id>.<name>`"),
    ] = None,
    user_id: Annotated[
        str | None, Query(pattern=id_pattern("usr"), description="only this user's jobs")
    ] = None,
    created_after: Moment = None,
    created_before: Moment = None,
) -> Page[AdminJobPublic]:
    """Every user's jobs, newest first. Filters combine; an unknown model matches nothing;
    `created_after` and `created_before` both exclude the moment they name."""
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    if model is not None:
        model_id = session.scalar(select(Model.id).where(Model.name == model))
        if model_id is None:
            return Page[AdminJobPublic](data=[], has_more=False, next_cursor=None)
        query = query.where(Job.model_id == model_id)
    if user_id is not None:
        query = query.where(Job.user_id == user_id)
    # Ids begin with their creation time, so a time range is an id range on every index.
    if created_after is not None:
        query = query.where(Job.id > largest_id_at("job", created_after))
    if created_before is not None:
        query = query.where(Job.id < smallest_id_at("job", created_before))

    def render(jobs: Sequence[Job]) -> list[AdminJobPublic]:
        names = _model_names(session, jobs)
        return [_admin_job(job, names[job.model_id], store, settings.api_url) for job in jobs]

    return paginate(
        session, query, Job.id, AdminJobPublic, limit=limit, cursor=cursor, render=render
    )


@router.get("/{job_id}")
def get_any_job(
    job_id: JobId,
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> AdminJobDetail:
    """A job with its logs, its attempts' errors and its events (the last 500 at most)."""
    job = _get(session, job_id)
    newest = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id)
        .order_by(JobEvent.id.desc())
        .limit(MAX_ADMIN_JOB_EVENTS + 1)
    ).all()
    events = [
        AdminJobEvent(
            id=event.id,
            type=event.type,
            data=render_event_data(event.type, event.data, store),
            created_at=event.created_at,
        )
        for event in reversed(newest[:MAX_ADMIN_JOB_EVENTS])
    ]
    public = _admin_job(job, _model_names(session, [job])[job.model_id], store, settings.api_url)
    return AdminJobDetail(
        **public.model_dump(),
        attempt_errors=list(job.attempt_errors),
        events=events,
        events_truncated=len(newest) > MAX_ADMIN_JOB_EVENTS,
    )


@router.post("/{job_id}/cancel", responses={409: {"description": "the job already ended"}})
def cancel_any_job(
    job_id: JobId,
    _admin: AdminPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    effects: JobEffectsDep,
) -> AdminJobPublic:
    """Cancel as the owner would: a queued job ends at once (its hold released), a running one
    stops at its next step."""
    _get(session, job_id)
    job = transitions.request_cancel(session, job_id, effects)
    name = _model_names(session, [job])[job.model_id]
    session.commit()
    return _admin_job(job, name, store, settings.api_url)
