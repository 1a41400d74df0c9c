"""`Goshen`, the SDK's client for applications, and `JobHandle`; `AsyncGoshen`
(goshen.client_async) has the same methods, awaited. Imports only httpx, pydantic and the
standard library.

    from goshen.client import Goshen
    goshen = Goshen()  # GOSHEN_API_URL and GOSHEN_API_KEY, or Goshen(url, api_key=...)
    job = goshen.run("digits-diffusion", {"digit": 7, "num_images": 4})
    pngs = [goshen.download(image.url) for image in job.images]

    handle = goshen.submit("digits-diffusion", {"digit": 3})
    for event in handle.stream():  # typed: StatusEvent, ProgressEvent, ..., DoneEvent
        if isinstance(event, ProgressEvent):
            print(f"{event.step}/{event.total}")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import httpx

from goshen.client_calls import Call, Sleep, Steps, SyncDriver, open_upload
from goshen.client_calls import read_object as _read
from goshen.client_errors import api_error
from goshen.client_http import GoshenAPIError
from goshen.client_operations import Operations
from goshen.client_retries import CONNECTION_ERRORS, RetryPolicy, send
from goshen.client_streams import (
    STREAM_READ_TIMEOUT_SECONDS,
    EventParser,
    Resumption,
    job_events,
    training_log,
)
from goshen.client_types import Event, Job

T = TypeVar("T")
DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_SECONDS = 30.0


class Goshen(Operations, SyncDriver):
    """Goshen's HTTP API as typed calls (goshen.client_types), errors as typed exceptions
    (goshen.client_errors). Reads, and POSTs the API deduplicates by Idempotency-Key, are
    retried on 429, 503 and lost connections up to `max_retries` times with full jitter,
    honouring `Retry-After`; `retries` holds the policy."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, headers = connection(base_url, api_key)
        self.retries = RetryPolicy(max_retries, backoff_base, backoff_cap)
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Goshen:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self,
        model: str,
        input: dict[str, Any],  # the API's own name for it
        **options: Any,
    ) -> JobHandle:
        """Queue a job and answer its handle at once (`create_job`'s options: webhook,
        webhook_events_filter, idempotency_key)."""
        job = self.create_job(model, input, **options)
        return JobHandle(self, job.id, job)

    def job(self, job_id: str) -> JobHandle:
        """The handle of a job submitted earlier, maybe by another process."""
        return JobHandle(self, job_id)

    def stream(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events as they happen, typed, until `done`; `last_event_id` starts after
        the events already seen. A stream that breaks is opened again after the last event
        read, so none is lost or repeated."""
        return self._follow(job_events(job_id, last_event_id, self.retries))

    def training_logs(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """The training job's events until `done`: a LogEvent per line of its log, a
        StatusEvent on changes; resumed like `stream` when cut."""
        return self._follow(training_log(job_id, last_event_id, self.retries))

    def _follow(self, resume: Resumption) -> Iterator[Event]:
        while True:
            error: Exception | None = None
            try:
                with self._http.stream(
                    "GET", resume.path, headers=resume.headers(), timeout=self._stream_timeout()
                ) as response:
                    if response.is_error:
                        response.read()
                        raise api_error(response)
                    parser = EventParser(resume.text_kinds)
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield resume.seen(event)
                            if event.kind == "done":
                                return
            except CONNECTION_ERRORS as exc:
                error = exc
            if error is None:
                found = self._drive(_read(resume.object_path))
                if (done := resume.ended(found)) is not None:
                    yield done
                    return
            self.retries.sleep(resume.cut(error))

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_SECONDS)

    def _drive(self, steps: Steps[T]) -> T:
        # Each step's outcome goes back into the operation: its answer, or the error it raised
        # (which the operation may catch); the operation is closed however it ends.
        with closing(steps):
            step = next(steps)
            while True:
                try:
                    reply = self._perform(step)
                except (GoshenAPIError, httpx.HTTPError, OSError) as exc:
                    outcome = partial(steps.throw, exc)
                else:
                    outcome = partial(steps.send, reply)
                try:
                    step = outcome()
                except StopIteration as stop:
                    result: T = stop.value
                    return result

    def _perform(self, step: Call | Sleep) -> Any:
        if isinstance(step, Sleep):
            self.retries.sleep(step.seconds)
            return None
        options = step.request_options(self._http.timeout)
        if step.signed:  # a signed link: the link is the credential, the key stays here
            response = httpx.request(step.method, step.path, **options)
            if response.is_error:
                raise api_error(response)
            return response.content
        if step.upload is None:
            response = send(
                self._http,
                self.retries,
                step.method,
                step.path,
                idempotent=step.idempotent,
                **options,
            )
        else:
            with open_upload(step.upload) as parts:
                response = send(
                    self._http, self.retries, step.method, step.path, **parts, **options
                )
        return reply_of(response)


@dataclass
class JobHandle:
    """A job by its id: read it, wait for it, follow its events, cancel it. `job` is the job as
    last read by the handle (None until it reads it)."""

    client: Goshen = field(repr=False)
    id: str
    job: Job | None = None

    def get(self) -> Job:
        self.job = self.client.get_job(self.id)
        return self.job

    def wait(self, *, timeout: float | None = None, raise_on_failure: bool = True) -> Job:
        self.job = self.client.wait(self.id, timeout=timeout, raise_on_failure=raise_on_failure)
        return self.job

    def stream(self, *, last_event_id: int | None = None) -> Iterator[Event]:
        return self.client.stream(self.id, last_event_id=last_event_id)

    def cancel(self) -> Job:
        self.job = self.client.cancel(self.id)
        return self.job


def connection(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The API's URL and the headers that authenticate to it: as given, or from GOSHEN_API_URL
    and GOSHEN_API_KEY."""
    url = base_url or os.environ.get("GOSHEN_API_URL") or DEFAULT_API_URL
    key = api_key or os.environ.get("GOSHEN_API_KEY")
    return url, ({"Authorization": f"Bearer {key}"} if key else {})


def reply_of(response: httpx.Response) -> Any:
    """The answer's JSON (None when empty); an error answer raises its typed error."""
    if response.is_error:
        raise api_error(response)
    return response.json() if response.content else None
