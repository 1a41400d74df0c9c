"""POST /v1/generate: queue an image job; `Prefer: wait` holds the answer until it ends."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from goshen.accounts import Principal
from serving.http.dependencies import (
    JobWatcherDep,
    LanesDep,
    ReadSessionsDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    StreamsDep,
    require_scope,
)
from serving.http.headers import IDEMPOTENCY_KEY_PATTERN, PreferHeader, wait_seconds
from serving.http.inflight import end_in_flight
from serving.http.openapi import problem_response
from serving.jobs.reads import load_job, wait_until_done
from serving.jobs.submit import submit
from serving.jobs.views import render_job
from serving.schemas import JobCreate, JobPublic

router = APIRouter(prefix="/v1", tags=["generation"])
GeneratePrincipal = Annotated[Principal, Depends(require_scope("generate"))]


@router.post(
    "/generate",
    status_code=201,
    responses={
        402: problem_response(
            "the account's available credit is short of the most this job may cost, or the job "
            "would take this API key past its monthly spend cap",
            "InsufficientCreditProblem",
            "SpendCapProblem",
        ),
        404: {"description": "no such model, or not one this key may call"},
        409: {"description": "the model takes no jobs now (no live version, disabled, failed)"},
        422: {"description": "a field or an input value is wrong; `errors` names each"},
        429: {
            "description": "this account has the most queued and running jobs it may have, or "
            "the most requests in progress at once (GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT)"
        },
    },
)
async def generate(
    body: JobCreate,
    request: Request,
    response: Response,
    principal: GeneratePrincipal,
    lanes: LanesDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    reads: ReadSessionsDep,
    watcher: JobWatcherDep,
    streams: StreamsDep,
    prefer: PreferHeader = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="replays of the same key and body within 24 h return the same job",
        ),
    ] = None,
) -> JobPublic:
    """Queue a job for an image model; the answer links to its status, cancel and event stream.

    With `Prefer: wait` (or `wait=N`, N at most 60) the answer comes when the job ends or N
    seconds pass, whichever is first.
    """
    started = time.monotonic()
    wait = wait_seconds(prefer)
    # The account's submissions go one at a time through its row lock (serving.jobs.submit):
    # in this process they wait for their turn here, holding no thread.
    async with lanes.submissions.turn(principal.user.id):
        submission = await run_in_threadpool(
            submit,
            session,
            principal,
            body,
            settings,
            idempotency_key=idempotency_key,
            interactive=wait is not None,
        )
    job = submission.job
    if wait is not None:
        end_in_flight(request)  # waiting holds no thread: it takes none of the account's slots
        await wait_until_done(reads, watcher, job.id, started + wait, streams)
        job = await run_in_threadpool(load_job, reads, job.id)
        response.headers["Preference-Applied"] = f"wait={wait}"
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    public = render_job(job, submission.model.name, store, settings.api_url)
    response.headers["Location"] = public.urls.get
    return public
