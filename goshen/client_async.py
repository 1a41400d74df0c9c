"""`AsyncGoshen`, the SDK's asyncio client, and `AsyncJobHandle`: `Goshen`'s methods
(goshen.client_sync), awaited. Imports only httpx, pydantic and the standard library.

    from goshen.client import AsyncGoshen
    async with AsyncGoshen() as goshen:
        job = await goshen.run("digits-diffusion", {"digit": 7, "num_images": 4})
        async for event in goshen.stream(job.id):
            ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import httpx

from goshen.client_calls import AsyncDriver, Call, Sleep, Steps, open_upload
from goshen.client_calls import read_object as _read
from goshen.client_errors import api_error
from goshen.client_http import GoshenAPIError
from goshen.client_operations import Operations
from goshen.client_retries import CONNECTION_ERRORS, RetryPolicy, send_async
from goshen.client_streams import (
    STREAM_READ_TIMEOUT_SECONDS,
    EventParser,
    Resumption,
    job_events,
    training_log,
)
from goshen.client_sync import DEFAULT_TIMEOUT_SECONDS, connection, reply_of
from goshen.client_types import Event, Job

T = TypeVar("T")


class AsyncGoshen(Operations, AsyncDriver):
    """`Goshen` for asyncio: the same calls, each awaited; listings and streams are async
    iterators. Retries wait with `retries.async_sleep`. An upload reads its file in the event
    loop's thread, 64 KiB at a time (httpx reads multipart files synchronously)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, headers = connection(base_url, api_key)
        self.retries = RetryPolicy(max_retries, backoff_base, backoff_cap)
        self._http = httpx.AsyncClient(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncGoshen:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(
        self,
        model: str,
        input: dict[str, Any],  # the API's own name for it
        **options: Any,
    ) -> AsyncJobHandle:
        """Queue a job and answer its handle at once (`create_job`'s options)."""
        job = await self.create_job(model, input, **options)
        return AsyncJobHandle(self, job.id, job)

    def job(self, job_id: str) -> AsyncJobHandle:
        """The handle of a job submitted earlier, maybe by another process."""
        return AsyncJobHandle(self, job_id)

    def stream(self, job_id: str, *, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """`Goshen.stream`: the job's events, typed, until `done`, resumed when cut."""
        return self._follow(job_events(job_id, last_event_id, self.retries))

    def training_logs(
        self, job_id: str, *, last_event_id: int | None = None
    ) -> AsyncIterator[Event]:
        """`Goshen.training_logs`: the training job's log and status, until `done`."""
        return self._follow(training_log(job_id, last_event_id, self.retries))

    async def _follow(self, resume: Resumption) -> AsyncIterator[Event]:
        while True:
            error: Exception | None = None
            try:
                async with self._http.stream(
                    "GET", resume.path, headers=resume.headers(), timeout=self._stream_timeout()
                ) as response:
                    if response.is_error:
                        await response.aread()
                        raise api_error(response)
                    parser = EventParser(resume.text_kinds)
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield resume.seen(event)
                            if event.kind == "done":
                                return
            except CONNECTION_ERRORS as exc:
                error = exc
            if error is None:
                found = await self._drive(_read(resume.object_path))
                if (done := resume.ended(found)) is not None:
                    yield done
                    return
            await self.retries.async_sleep(resume.cut(error))

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_SECONDS)

    async def _drive(self, steps: Steps[T]) -> T:
        # Each step's outcome goes back into the operation: its answer, or the error it raised
        # (which the operation may catch); the operation is closed however it ends.
        with closing(steps):
            step = next(steps)
            while True:
                try:
                    reply = await self._perform(step)
                except (GoshenAPIError, httpx.HTTPError, OSError) as exc:
                    outcome = partial(steps.throw, exc)
                else:
                    outcome = partial(steps.send, reply)
                try:
                    step = outcome()
                except StopIteration as stop:
                    result: T = stop.value
                    return result

    async def _perform(self, step: Call | Sleep) -> Any:
        if isinstance(step, Sleep):
            await self.retries.async_sleep(step.seconds)
            return None
        options = step.request_options(self._http.timeout)
        if step.signed:  # a signed link: the link is the credential, the key stays here
            async with httpx.AsyncClient() as bare:
                response = await bare.request(step.method, step.path, **options)
            if response.is_error:
                raise api_error(response)
            return response.content
        if step.upload is None:
            response = await send_async(
                self._http,
                self.retries,
                step.method,
                step.path,
                idempotent=step.idempotent,
                **options,
            )
        else:
            with open_upload(step.upload) as parts:
                response = await send_async(
                    self._http, self.retries, step.method, step.path, **parts, **options
                )
        return reply_of(response)


@dataclass
class AsyncJobHandle:
    """`JobHandle` for `AsyncGoshen`: read, wait for, follow and cancel a job by its id."""

    client: AsyncGoshen = field(repr=False)
    id: str
    job: Job | None = None

    async def get(self) -> Job:
        self.job = await self.client.get_job(self.id)
        return self.job

    async def wait(self, *, timeout: float | None = None, raise_on_failure: bool = True) -> Job:
        self.job = await self.client.wait(
            self.id, timeout=timeout, raise_on_failure=raise_on_failure
        )
        return self.job

    def stream(self, *, last_event_id: int | None = None) -> AsyncIterator[Event]:
        return self.client.stream(self.id, last_event_id=last_event_id)

    async def cancel(self) -> Job:
        self.job = await self.client.cancel(self.id)
        return self.job
