"""Training jobs: submit (holding the most the job may cost), watch (with a live log stream),
cancel."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from goshen import training
from goshen.accounts import Principal
from goshen.billing import training_charges
from goshen.config import Settings
from goshen.db.models import TrainingJob
from goshen.registry_rest import shown
from serving.http.dependencies import ApiStateDep, SessionDep, SettingsDep, require_scope
from serving.http.headers import LastEventId
from serving.http.openapi import problem_response
from serving.http.pagination import Cursor, Limit, Page, paginate
from serving.http.paths import TrainingJobId
from serving.http.streams import KeyCheck, StreamGuard, bearer_key
from serving.jobs.watch import wait_for_event
from serving.schemas.training import TrainingJobCreate, TrainingJobLinks, TrainingJobPublic

router = APIRouter(prefix="/v1/training-jobs", tags=["training"])
TrainingPrincipal = Annotated[Principal, Depends(require_scope("training"))]
# No notification announces new log lines: an open log stream reads the job this often.
LOG_POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


@router.post(
    "",
    status_code=201,
    responses={
        402: problem_response(
            "the account's available credit is short of the most this job may cost (its time "
            "limit at the training price), or the job would take this API key past its monthly "
            "spend cap",
            "InsufficientCreditProblem",
            "SpendCapProblem",
        ),
        404: {"description": "no dataset with that id that this key may see"},
        409: {"description": "the dataset is not ready to train on"},
    },
)
def submit_training_job(
    body: TrainingJobCreate,
    principal: TrainingPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> TrainingJobPublic:
    """Validate, price and queue a training job, holding the most it may cost (its
    `estimated_cost_micros`); a Dagster run starts it shortly. It is charged the seconds it runs
    when it succeeds or is canceled, nothing when the platform fails it."""
    job = training.submit(
        session,
        principal.user,
        dataset_id=body.dataset_id,
        task=body.task,
        model_name=body.model_name,
        config=body.config,
        price_micros_per_second=settings.training_price_micros_per_second,
        deploy=body.deploy,
    )
    training_charges.hold(session, principal, job, billing_enabled=settings.billing_enabled)
    session.commit()
    return training_job_view(job, settings)


@router.get("")
def list_training_jobs(
    principal: TrainingPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[TrainingJobPublic]:
    query = select(TrainingJob).where(TrainingJob.user_id == principal.user.id)
    return paginate(
        session,
        query,
        TrainingJob.id,
        TrainingJobPublic,
        limit=limit,
        cursor=cursor,
        render=lambda jobs: [training_job_view(job, settings) for job in jobs],
    )


@router.get("/{job_id}")
def get_training_job(
    job_id: TrainingJobId, principal: TrainingPrincipal, session: SessionDep, settings: SettingsDep
) -> TrainingJobPublic:
    """The job: its status, seconds run and cost, and links to its dataset, model and runs."""
    return training_job_view(training.get_owned(session, job_id, principal.user.id), settings)


def training_job_view(job: TrainingJob, settings: Settings) -> TrainingJobPublic:
    mlflow = settings.mlflow_url or shown(settings.resolved_mlflow_tracking_uri)
    version = job.registered_version
    model = f"/v1/models/{job.model_name}" if version is not None else None
    links = TrainingJobLinks(
        dataset=f"/v1/datasets/{job.dataset_id}" if job.dataset_id else None,
        model=model,
        model_versions=f"{model}/versions" if model is not None else None,
        dagster_run=f"{settings.resolved_dagster_url}/runs/{job.dagster_run_id}"
        if job.dagster_run_id
        else None,
        mlflow_run=f"{mlflow}/#/runs/{job.mlflow_run_id}" if job.mlflow_run_id else None,
        mlflow_model_version=f"{mlflow}/#/models/{job.registered_model}/versions/{version}"
        if version is not None
        else None,
    )
    return TrainingJobPublic.model_validate(job).model_copy(
        update={"links": links, "run_seconds": job.gpu_seconds}
    )


@router.post("/{job_id}/cancel", responses={409: {"description": "the job already ended"}})
def cancel_training_job(
    job_id: TrainingJobId, principal: TrainingPrincipal, session: SessionDep, settings: SettingsDep
) -> TrainingJobPublic:
    """Queued jobs end at once, uncharged; a running job's Dagster run is terminated within
    seconds, and charged the seconds it ran."""
    job = training.cancel(
        session,
        job_id,
        principal.user.id,
        price_micros_per_second=settings.training_price_micros_per_second,
    )
    session.commit()
    return training_job_view(job, settings)


@router.get(
    "/{job_id}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
def stream_training_logs(
    job_id: TrainingJobId,
    request: Request,
    principal: TrainingPrincipal,
    session: SessionDep,
    state: ApiStateDep,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """Server-sent events: `log` per line, `status` on changes, `done` when the job ends.

    Each event's id is the log offset after it, so a client resuming with `Last-Event-ID`
    gets only the lines it missed. A stream may also end with `shutdown` (reconnect with
    `Last-Event-ID`) or `unauthorized` (the key was revoked or its user disabled meanwhile).
    """
    training.get_owned(session, job_id, principal.user.id)
    session.close()  # the stream polls with short sessions of its own
    key = KeyCheck(state.principals, state.read_sessions, bearer_key(request), principal)
    guard = StreamGuard(state.streams, key)
    events = _log_events(state.read_sessions, guard, job_id, last_event_id or 0)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _read_log(factory: sessionmaker[Session], job_id: str) -> tuple[str, str, bool]:
    """The job's log, status, and whether it has ended, in a short session of its own."""
    with factory() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None, "training jobs are never deleted while streamed"
        return job.logs, str(job.status), job.status in training.TERMINAL


async def _log_events(
    factory: sessionmaker[Session], guard: StreamGuard, job_id: str, offset: int
) -> AsyncIterator[str]:
    """Async, so that an open stream holds no worker thread between its reads."""
    status = None
    last_sent = time.monotonic()
    woken = asyncio.Event()
    read_at = 0.0
    with guard.open(woken.set):
        while True:
            if (final := guard.final_event()) is not None:
                yield final
                return
            if time.monotonic() - read_at >= LOG_POLL_SECONDS:
                read_at = time.monotonic()
                logs, current, terminal = await run_in_threadpool(_read_log, factory, job_id)
                for line in logs[offset:].splitlines(keepends=True):
                    if not line.endswith("\n"):
                        break  # a line still being written; send it whole next time
                    offset += len(line)
                    yield _event("log", line.rstrip("\n"), offset)
                    last_sent = time.monotonic()
                if current != status:
                    status = current
                    yield _event("status", json.dumps({"status": current}), offset)
                if terminal:
                    yield _event("done", json.dumps({"status": current}), offset)
                    return
            if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await wait_for_event(woken, max(read_at + LOG_POLL_SECONDS - time.monotonic(), 0.0))
            woken.clear()


def _event(name: str, data: str, event_id: int) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n"
