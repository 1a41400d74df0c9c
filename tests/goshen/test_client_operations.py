"""The SDK's operations without any I/O (goshen.client_operations, goshen.client_streams): each is
a generator of the calls it needs, so a test answers them itself, in any order a server could,
and sees every call and pause it would make. The end-to-end tests of both clients against a
real API are in test_client_sync_and_async.py."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from goshen.client import AsyncGoshen, Goshen
from goshen.client_calls import Call, Sleep, Steps, operation
from goshen.client_errors import JobFailed, NotFound, Timeout
from goshen.client_operations import Operations
from goshen.client_retries import RetryPolicy
from goshen.client_streams import EventParser, job_events, training_log
from goshen.client_types import (
    DoneEvent,
    Job,
    LogEvent,
    OtherEvent,
    ProgressEvent,
    StatusEvent,
)


def _job(status: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": "job_1",
        "model": "digits",
        "status": status,
        "created_at": "2026-12-05T10:00:00+00:00",
    } | fields


def _steps(name: str, *args: Any, **kwargs: Any) -> Steps[Any]:
    """The generator behind Operations.`name`, as both clients run it."""
    steps: Steps[Any] = vars(Operations)[name]._steps(None, *args, **kwargs)
    return steps


def _answer(steps: Steps[Any], answers: list[Any]) -> tuple[Any, list[Call | Sleep]]:
    """Run `steps`, answering each Call with the next of `answers` (a Sleep gets None); the
    result and every step taken."""
    taken: list[Call | Sleep] = []
    reply: Any = None
    pending = iter(answers)
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as stop:
            return stop.value, taken
        taken.append(step)
        reply = None if isinstance(step, Sleep) else next(pending)


def test_run_waits_in_the_submission_then_holds_each_read_until_the_job_ends() -> None:
    job, taken = _answer(
        _steps("run", "digits", {"digit": 7}),
        [_job("queued"), _job("running"), _job("succeeded", output={"images": [{"url": "u"}]})],
    )

    assert isinstance(job, Job) and [image.url for image in job.images] == ["u"]
    submit, *reads = [step for step in taken if isinstance(step, Call)]
    assert isinstance(submit, Call) and submit.method == "POST" and submit.idempotent
    assert submit.headers is not None and submit.headers["Prefer"] == "wait=60"
    assert len(submit.headers["Idempotency-Key"]) == 32
    assert [(read.method, read.path) for read in reads] == [("GET", "/v1/jobs/job_1")] * 2
    assert all(read.headers == {"Prefer": "wait=60"} for read in reads)


def test_waiting_on_an_api_that_answers_at_once_polls_with_growing_pauses() -> None:
    """An API that ignores `Prefer: wait` on reads answers a running job at once: the wait must
    pause between reads, longer each time, rather than read in a hot loop."""
    answers = [_job("running")] * 5 + [_job("failed", error="out of memory")]

    with pytest.raises(JobFailed) as failed:
        _answer(_steps("wait", "job_1"), answers)

    assert failed.value.job.error == "out of memory"
    # The steps were consumed up to the failure: replay them to see the pauses.
    _, taken = _answer(_steps("wait", "job_1", raise_on_failure=False), answers)
    pauses = [step.seconds for step in taken if isinstance(step, Sleep)]
    assert pauses == [0.25, 0.5, 1.0, 2.0]  # one after each held read that was not held


def test_a_wait_past_its_timeout_raises_timeout_with_the_job_id() -> None:
    steps = _steps("wait", "job_1", timeout=0)
    with pytest.raises(Timeout) as late:
        _answer(steps, [_job("queued")])
    assert late.value.job_id == "job_1" and isinstance(late.value, TimeoutError)


def test_an_upload_call_carries_its_fields_and_a_long_timeout() -> None:
    steps = _steps("upload_dataset", "/tmp/rows.csv", "rows", kind="tabular")
    call = next(steps)
    assert isinstance(call, Call) and call.upload is not None
    assert dict(call.upload.fields) == {"name": "rows", "kind": "tabular"}
    assert call.timeout == 300 and not call.idempotent


def test_the_parser_types_each_kind_and_keeps_unknown_ones() -> None:
    parser = EventParser()
    lines = [
        "id: 1", "event: status", 'data: {"status": "running", "attempt": 1}', "",
        ": keep-alive", "",
        "id: 2", "event: progress", 'data: {"step": 3, "total": 10, "percentage": 30.0}', "",
        "id: 3", "event: log", 'data: {"message": "  indented"}', "",
        "id: 4", "event: moved", 'data: {"to": "elsewhere"}', "",
        "id: 5", "event: done", 'data: {"status": "failed", "error": "boom"}', "",
    ]  # fmt: skip

    events = [event for line in lines if (event := parser.feed(line)) is not None]

    assert events == [
        StatusEvent(id=1, status="running", attempt=1),
        ProgressEvent(id=2, step=3, total=10, percentage=30.0),
        LogEvent(id=3, message="  indented"),
        OtherEvent(id=4, kind="moved", data={"to": "elsewhere"}),
        DoneEvent(id=5, status="failed", error="boom"),
    ]


def test_a_stream_resumes_after_the_last_event_and_gives_up_after_repeated_cuts() -> None:
    policy = RetryPolicy(max_retries=2, backoff_base=1, draw=lambda low, high: high)
    resume = job_events("job_1", None, policy)
    assert resume.headers() == {}
    resume.seen(LogEvent(id=7, message="a"))
    assert resume.headers() == {"Last-Event-ID": "7"}

    cut = ConnectionResetError("cut")
    assert [resume.cut(cut), resume.cut(cut)] == [1, 2]
    with pytest.raises(ConnectionResetError):
        resume.cut(cut)  # a third cut with no event between
    resume.seen(LogEvent(id=8, message="b"))
    assert resume.cut(cut) == 1  # an event read: the count starts over


def test_a_training_log_reads_its_lines_as_text() -> None:
    resume = training_log("trn_1", None, RetryPolicy())
    parser = EventParser(resume.text_kinds)
    lines = ["id: 12", "event: log", "data: epoch 1 loss=0.5", ""]
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    assert events == [LogEvent(id=12, message="epoch 1 loss=0.5")]
    assert (resume.path, resume.object_path) == (
        "/v1/training-jobs/trn_1/logs",
        "/v1/training-jobs/trn_1",
    )


def test_a_stream_closed_without_done_ends_with_one_for_a_job_that_ended() -> None:
    resume = job_events("job_1", 41, RetryPolicy())
    assert resume.object_path == "/v1/jobs/job_1"
    assert resume.ended(_job("running")) is None
    done = resume.ended(_job("canceled", error="canceled by its owner"))
    assert done == DoneEvent(id=41, status="canceled", error="canceled by its owner")


def _exists(client: Any, job_id: str) -> Steps[bool]:
    """An operation that handles an error answer itself, as a test's own."""
    try:
        yield Call("GET", f"/v1/jobs/{job_id}")
    except NotFound:
        return False
    finally:
        client.finished.append(job_id)
    return True


class _SyncProbe(Goshen):
    exists = operation(_exists)
    finished: list[str]


class _AsyncProbe(AsyncGoshen):
    exists = operation(_exists)
    finished: list[str]


def _answers(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/missing"):
        return httpx.Response(404, json={"status": 404, "detail": "no such job"})
    return httpx.Response(200, json=_job("queued"))


def test_both_drivers_give_an_error_answer_to_the_operation_and_close_it() -> None:
    """httpx.MockTransport stands in for the API: the operation is the test's own, and only a
    fake answers 404 for one path and 200 for another on cue."""
    sync = _SyncProbe("http://goshen.test", "gsk_test", transport=httpx.MockTransport(_answers))
    sync.finished = []
    assert (sync.exists("job_1"), sync.exists("missing")) == (True, False)
    assert sync.finished == ["job_1", "missing"]  # each operation ran its `finally`

    async def run_async() -> tuple[bool, bool, list[str]]:
        transport = httpx.MockTransport(_answers)
        async with _AsyncProbe("http://goshen.test", "gsk_test", transport=transport) as probe:
            probe.finished = []
            return await probe.exists("job_1"), await probe.exists("missing"), probe.finished

    assert asyncio.run(run_async()) == (True, False, ["job_1", "missing"])
