"""A user's jobs: list, read, cancel, and follow as server-sent events."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from goshen import catalog
from goshen.accounts import Principal
from goshen.db import access
from goshen.db.models import Job, JobEvent, JobStatus, Model
from goshen.errors import NotFoundError
from goshen.storage import ArtifactStore
from serving.http.dependencies import (
    ApiStateDep,
    JobEffectsDep,
    JobWatcherDep,
    LanesDep,
    ReadSessionDep,
    ReadSessionsDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    StreamsDep,
    require_any_scope,
)
from serving.http.headers import LastEventId, PreferHeader, wait_seconds
from serving.http.inflight import end_in_flight
from serving.http.pagination import Cursor, Limit, Page, paginate
from serving.http.paths import JobId
from serving.http.streams import KeyCheck, StreamGuard, bearer_key
from serving.jobs import transitions
from serving.jobs.reads import MAX_EVENTS_PER_READ, wait_until_done
from serving.jobs.transitions import TERMINAL
from serving.jobs.views import render_event_data, render_job
from serving.jobs.watch import JobWatcher
from serving.schemas import CatalogName, JobPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobsPrincipal = Annotated[Principal, Depends(require_any_scope("jobs", "generate"))]
KEEPALIVE_SECONDS = 15.0


def _owned(session: Session, job_id: str, user_id: str) -> Job:
    return access.get_owned(session, Job, job_id, user_id, "job")


def _model_names(session: Session, jobs: Sequence[Job]) -> dict[str, str]:
    ids = {job.model_id for job in jobs}
    return dict(session.execute(select(Model.id, Model.name).where(Model.id.in_(ids))).all())


@router.get("")
async def list_jobs(
    principal: JobsPrincipal,
    reads: ReadSessionsDep,
    lanes: LanesDep,
    settings: SettingsDep,
    store: StoreDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    model: Annotated[CatalogName | None, Query(description="only this model's jobs")] = None,
) -> Page[JobPublic]:
    """Your jobs, newest first."""
    query = select(Job).where(Job.user_id == principal.user.id)
    if status is not None:
        query = query.where(Job.status == status)

    def read() -> Page[JobPublic]:
        with reads() as session:
            filtered = query
            if model is not None:
                try:
                    found = catalog.get_visible(session, model, principal.user.id)
                except NotFoundError:
                    return Page[JobPublic](data=[], has_more=False, next_cursor=None)
                filtered = query.where(Job.model_id == found.id)

            def render(jobs: Sequence[Job]) -> list[JobPublic]:
                names = _model_names(session, jobs)
                return [
                    render_job(job, names[job.model_id], store, settings.api_url) for job in jobs
                ]

            return paginate(
                session, filtered, Job.id, JobPublic, limit=limit, cursor=cursor, render=render
            )

    # On the hot-read threads: another account's burst of submissions cannot hold them up.
    return await lanes.read(read)


@router.get("/{job_id}")
async def get_job(
    job_id: JobId,
    principal: JobsPrincipal,
    response: Response,
    request: Request,
    reads: ReadSessionsDep,
    lanes: LanesDep,
    settings: SettingsDep,
    store: StoreDep,
    watcher: JobWatcherDep,
    streams: StreamsDep,
    prefer: PreferHeader = None,
) -> JobPublic:
    """A job of yours. With `Prefer: wait` (or `wait=N`, N at most 60) the answer comes when the
    job ends or N seconds pass, whichever is first: long polling, for clients that cannot hold
    the event stream open."""
    started = time.monotonic()
    wait = wait_seconds(prefer)
    user_id = principal.user.id
    # On the hot-read threads: another account's burst of submissions cannot hold them up.
    job, name = await lanes.read(lambda: _read_owned(reads, job_id, user_id))
    if wait is not None:
        if job.status not in TERMINAL:  # owned: 404 before any waiting
            end_in_flight(request)  # waiting holds no thread: it takes none of the account's slots
            await wait_until_done(reads, watcher, job_id, started + wait, streams)
            job, name = await lanes.read(lambda: _read_owned(reads, job_id, user_id))
        response.headers["Preference-Applied"] = f"wait={wait}"
    return render_job(job, name, store, settings.api_url)


def _read_owned(reads: sessionmaker[Session], job_id: str, user_id: str) -> tuple[Job, str]:
    with reads() as session:
        job = _owned(session, job_id, user_id)
        return job, _model_names(session, [job])[job.model_id]


@router.post("/{job_id}/cancel", responses={409: {"description": "the job already ended"}})
def cancel_job(
    job_id: JobId,
    principal: JobsPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    effects: JobEffectsDep,
) -> JobPublic:
    """A queued job ends canceled at once; a running one stops at its next denoising step."""
    _owned(session, job_id, principal.user.id)
    job = transitions.request_cancel(session, job_id, effects)
    name = _model_names(session, [job])[job.model_id]
    session.commit()
    return render_job(job, name, store, settings.api_url)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
def stream_job_events(
    job_id: JobId,
    request: Request,
    principal: JobsPrincipal,
    session: ReadSessionDep,
    state: ApiStateDep,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """Server-sent events: `status` on each change, `progress` per denoising step, `log` per
    line, `output` (signed image links), and `done` when the job ends.

    Event ids grow; reconnecting with `Last-Event-ID` resumes after the last event received.
    A stream may also end with `shutdown` (the API process is stopping: reconnect with
    `Last-Event-ID`) or `unauthorized` (the key was revoked or its user disabled meanwhile).
    """
    _owned(session, job_id, principal.user.id)
    session.close()  # the stream reads with short sessions of its own
    key = KeyCheck(state.principals, state.read_sessions, bearer_key(request), principal)
    guard = StreamGuard(state.streams, key)
    events = _events(
        state.read_sessions, state.job_watcher, state.store, guard, job_id, last_event_id or 0
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _news(reads: sessionmaker[Session], job_id: str, after: int) -> tuple[bool, list[JobEvent]]:
    """Whether the job had ended, then its events after `after`: one transaction and one hop
    to a thread, the whole cost of a stream's read. The status first: if the job had ended by
    then, the events read next include its last ones."""
    with reads() as session:
        job = session.get(Job, job_id)
        assert job is not None, "jobs are deleted only with their user"
        ended = job.status in TERMINAL
        events = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(MAX_EVENTS_PER_READ)
        )
        return ended, list(events)


async def _events(
    reads: sessionmaker[Session],
    watcher: JobWatcher,
    store: ArtifactStore,
    guard: StreamGuard,
    job_id: str,
    after: int,
) -> AsyncIterator[str]:
    """The job's events as they are written. An idle stream reads nothing: it waits for a
    notification (or its rare poll), waking otherwise only to send keep-alives."""
    last_sent = time.monotonic()
    with watcher.watching(job_id) as waiter, guard.open(waiter.event.set):
        read = True
        while True:
            if (final := guard.final_event()) is not None:
                yield final
                return
            if read:
                ended, events = await run_in_threadpool(_news, reads, job_id, after)
                for event in events:
                    after = event.id
                    data = render_event_data(event.type, event.data, store)
                    yield f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(data)}\n\n"
                    last_sent = time.monotonic()
                    if event.type == "done":
                        return
                if len(events) == MAX_EVENTS_PER_READ:
                    continue  # more are waiting: read on at once
                if not events and ended:
                    return  # resumed after `done`: nothing more will come
            if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            read = await waiter.changed(last_sent + KEEPALIVE_SECONDS - time.monotonic())
