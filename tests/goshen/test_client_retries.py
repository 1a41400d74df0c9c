"""The SDK's typed errors and retries (goshen.client_errors, goshen.client_retries).

The first tests answer through httpx.MockTransport, a fake transport: only it can say "503, then
429, then 200" or "the connection dropped twice" on cue, and record the waits without spending
them, which the backoff arithmetic and "a POST without a key is sent once" need. The rest run
against the real API on uvicorn (both database backends): its rate limiter's 429 retried after its
Retry-After, its problems as typed errors, and a POST /v1/generate whose answer was lost on the
way back retried with its Idempotency-Key, making one job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.client import (
    Conflict,
    Forbidden,
    GoshenAPIError,
    GoshenClient,
    InsufficientCredits,
    InvalidInput,
    JobFailed,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServiceUnavailable,
    Timeout,
    Unauthorized,
    error_for,
)
from goshen.client_errors import retry_after_seconds
from goshen.config import Settings
from goshen.db.models import Job, Model
from tests.fixtures.accounts import Account, create_account
from tests.fixtures.sdk import Faults

Answer = Callable[[httpx.Request], httpx.Response]


def _fake(answers: list[Answer | Exception], **options: Any) -> tuple[GoshenClient, list[Any]]:
    """A client whose requests get `answers` in turn (an exception is raised as the request's
    fate), with the waits it would sleep recorded instead, drawing the top of each range."""
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = answers[min(len(sent), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer(request)

    client = GoshenClient("http://goshen.test", "gsk_test", transport=httpx.MockTransport(handle))
    slept: list[float] = []
    client.retries = replace(
        RetryPolicy(**options), sleep=slept.append, draw=lambda low, high: high
    )
    return client, [sent, slept]


def _status(code: int, retry_after: str | None = None, **body: Any) -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return lambda _request: httpx.Response(code, json={"status": code, **body}, headers=headers)


def test_the_kth_wait_is_drawn_up_to_base_times_2_to_the_k_under_the_cap() -> None:
    top = RetryPolicy(backoff_base=0.5, backoff_cap=10, draw=lambda low, high: high)
    bottom = replace(top, draw=lambda low, high: low)

    assert [top.backoff(k) for k in range(6)] == [0.5, 1, 2, 4, 8, 10]
    assert [bottom.backoff(k) for k in range(6)] == [0] * 6
    assert top.delay(0, retry_after=3) == 3.5 and bottom.delay(2, retry_after=3) == 3
    assert top.delay(0, retry_after=11) is None  # longer than the cap: the caller decides


def test_retry_after_is_read_as_seconds_or_a_date_or_from_the_problem() -> None:
    in_five = formatdate(time.time() + 5, usegmt=True)

    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert 3 < (retry_after_seconds(httpx.Headers({"Retry-After": in_five})) or 0) <= 5
    assert retry_after_seconds({"retry-after": "soon"}, {"retry_after": 2}) == 2
    assert retry_after_seconds({}) is None


def test_a_read_is_retried_after_each_retry_after_until_it_succeeds() -> None:
    client, (sent, slept) = _fake(
        [_status(503, "2"), _status(429, "1"), httpx.ConnectError("refused"), _status(200)],
        backoff_base=0.25,
    )

    assert client.balance() == {"status": 200}
    assert len(sent) == 4 and slept == [2.25, 1.25, 1.0]  # Retry-After + jitter, then 0.25·2²


def test_a_post_without_an_idempotency_key_is_sent_once() -> None:
    for fate in (_status(503, "1"), _status(429, "1"), httpx.RemoteProtocolError("dropped")):
        client, (sent, slept) = _fake([fate, _status(201)])
        with pytest.raises((ServiceUnavailable, RateLimited, httpx.RemoteProtocolError)):
            client.create_key("laptop")
        assert len(sent) == 1 and slept == []
    client, (sent, _) = _fake([_status(503, "1"), _status(200)])
    with pytest.raises(ServiceUnavailable):
        client.update_key("key_1", name="renamed")  # PATCH and DELETE alike
    assert len(sent) == 1


def test_a_post_with_a_key_is_retried_with_the_same_key_and_each_call_has_its_own() -> None:
    created = _status(201, id="job_1")
    client, (sent, slept) = _fake(
        [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), created], backoff_base=0.1
    )

    assert client.generate("digits", {"digit": 7})["id"] == "job_1"
    client.generate("digits", {"digit": 7})
    client.generate("digits", {"digit": 7}, idempotency_key="mine-1")

    keys = [request.headers["Idempotency-Key"] for request in sent]
    assert len(sent) == 5 and keys[0] == keys[1] == keys[2] != keys[3] and keys[4] == "mine-1"
    assert slept == [0.1, 0.2]


def test_retries_run_out_and_the_last_answer_is_raised() -> None:
    client, (sent, slept) = _fake([_status(429, "0", detail="slow down")], max_retries=3)
    with pytest.raises(RateLimited) as limited:
        client.get_job("job_1")
    assert len(sent) == 4 and len(slept) == 3 and limited.value.retry_after == 0

    client, (sent, _) = _fake([_status(503)], max_retries=0)
    with pytest.raises(ServiceUnavailable):
        client.get_job("job_1")
    assert len(sent) == 1


def test_a_retry_after_beyond_the_cap_goes_to_the_caller_unwaited() -> None:
    client, (sent, slept) = _fake([_status(429, "120")], backoff_cap=30)
    with pytest.raises(RateLimited) as limited:
        client.balance()
    assert (len(sent), slept, limited.value.retry_after) == (1, [], 120)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, Unauthorized),
        (402, InsufficientCredits),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (422, InvalidInput),
        (429, RateLimited),
        (503, ServiceUnavailable),
        (500, GoshenAPIError),
    ],
)
def test_each_status_has_its_error_and_every_one_is_a_goshen_api_error(
    status: int, kind: type[GoshenAPIError]
) -> None:
    error = error_for(status, {"detail": "what to fix"}, {})
    assert type(error) is kind and isinstance(error, GoshenAPIError)
    assert (error.status_code, str(error)) == (status, f"{status}: what to fix")
    assert str(GoshenAPIError(status, {"title": "Old style"})) == f"{status}: Old style"
    assert issubclass(Timeout, TimeoutError)


# Against the real API.


@pytest.fixture
def catalog_model(make_model: Callable[..., Model]) -> Model:
    """A priced catalog entry: generating queues a job that no worker runs here."""
    return make_model()


@pytest.fixture
def sdk(live_api: Settings, developer: Account) -> Iterator[GoshenClient]:
    with GoshenClient(live_api.api_url, developer.key, backoff_base=0.05) as client:
        yield client


def test_a_real_429_is_retried_after_its_retry_after(
    settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    developer: Account,
) -> None:
    limited = Settings(
        **{**settings.model_dump(), "_env_file": None, "rate_limit_default": "2/second"}
    )
    recording = Faults()
    with run_api(limited) as served:
        with GoshenClient(served.api_url, developer.key, transport=recording) as patient:
            balances = [patient.balance() for _ in range(5)]  # over 2 a second: at least one 429
        impatient = GoshenClient(served.api_url, developer.key, max_retries=0)
        with impatient, pytest.raises(RateLimited) as refused:
            for _ in range(5):
                impatient.balance()

    assert len(balances) == 5 and all("available_micros" in balance for balance in balances)
    retried = [
        (refusal, retry)
        for refusal, retry in zip(recording.exchanges, recording.exchanges[1:], strict=False)
        if refusal.status == 429
    ]
    assert retried
    for refusal, retry in retried:
        assert retry.sent_at - refusal.answered_at >= float(refusal.headers["Retry-After"])
        assert retry.status == 200
    assert refused.value.retry_after == 1 and refused.value.problem["policy"] == "default"


def test_real_problems_are_typed_errors(
    sdk: GoshenClient,
    live_api: Settings,
    sessions: sessionmaker[Session],
    catalog_model: Model,
) -> None:
    with pytest.raises(InvalidInput) as invalid:
        sdk.generate(catalog_model.name, {"digit": 10})
    assert [field for field, _ in invalid.value.fields] == ["input.digit"]
    with pytest.raises(NotFound):
        sdk.get_model("no-such-model")
    with pytest.raises(Forbidden):
        sdk.admin_stats()
    with GoshenClient(live_api.api_url, "gsk_" + "x" * 40) as stranger, pytest.raises(Unauthorized):
        stranger.balance()
    broke = create_account(sessions, credits_micros=0)
    with (
        GoshenClient(live_api.api_url, broke.key) as client,
        pytest.raises(InsufficientCredits) as short,
    ):
        client.generate(catalog_model.name, {"digit": 1})
    assert short.value.available == 0 and (short.value.required or 0) > 0


def test_waiting_raises_timeout_with_the_job_id_and_job_failed_only_when_asked(
    sdk: GoshenClient, catalog_model: Model
) -> None:
    job = sdk.generate(catalog_model.name, {"digit": 2})  # no worker: it stays queued
    started = time.monotonic()
    with pytest.raises(Timeout) as late:
        sdk.wait_for_job(job["id"], timeout=0.5)
    assert late.value.job_id == job["id"] and time.monotonic() - started < 5

    sdk.cancel_job(job["id"])
    with pytest.raises(Conflict):
        sdk.cancel_job(job["id"])
    assert sdk.wait_for_job(job["id"])["status"] == "canceled"
    with pytest.raises(JobFailed) as failed:
        sdk.wait_for_job(job["id"], raise_on_failure=True)
    assert failed.value.job["id"] == job["id"] and failed.value.job["status"] == "canceled"


def test_a_generate_whose_answer_was_lost_is_retried_with_its_key_making_one_job(
    live_api: Settings, developer: Account, catalog_model: Model, sessions: sessionmaker[Session]
) -> None:
    losing = Faults(lose="POST /v1/generate")
    with GoshenClient(live_api.api_url, developer.key, transport=losing) as client:
        job = client.generate(catalog_model.name, {"digit": 5})
        listed = [listed["id"] for listed in client.list_jobs()]

    first, retry = losing.to("/v1/generate")
    assert first.status == retry.status == 201  # the first made the job; its answer was lost
    key = first.request.headers["Idempotency-Key"]
    assert retry.request.headers["Idempotency-Key"] == key
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert listed == [job["id"]]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_post_without_a_key_whose_answer_was_lost_is_not_sent_again(
    live_api: Settings, developer: Account
) -> None:
    losing = Faults(lose="POST /v1/keys")
    with GoshenClient(live_api.api_url, developer.key, transport=losing) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.create_key("laptop")
        keys = client.list_keys()

    assert len(losing.to("/v1/keys")) == 2  # the lost POST, then the list: no second POST
    assert sorted(key["name"] for key in keys) == ["laptop", "test"]  # one key made, not two


def test_a_key_alone_does_not_make_a_post_retried() -> None:
    """A route that ignores Idempotency-Key would act twice: only the SDK's calls to routes that
    honour it (generate, credit grants) say `idempotent=True`."""
    client, (sent, slept) = _fake([httpx.RemoteProtocolError("dropped"), _status(200)])
    with pytest.raises(httpx.RemoteProtocolError):
        client.request("POST", "/v1/models/m/predict", json={}, headers={"Idempotency-Key": "k"})
    assert len(sent) == 1 and slept == []


def test_a_retry_after_in_other_digits_or_a_utc_date_is_read_right() -> None:
    assert retry_after_seconds({"retry-after": "²"}) is None
    later = datetime.now(UTC) + timedelta(seconds=120)
    stamp = later.strftime("%a, %d %b %Y %H:%M:%S -0000")
    assert 100 < (retry_after_seconds({"retry-after": stamp}) or 0) <= 121


def test_a_job_stream_that_ends_without_done_reads_the_job_and_backs_off() -> None:
    """A proxy that closes long streams cleanly, or a job with no `done` event: the job itself
    says when it ended, and empty streams are not reopened at once (no hot loop)."""
    statuses = iter(["running", "running", "succeeded"])

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, text="", headers={"Content-Type": "text/event-stream"})
        return httpx.Response(200, json={"id": "job_1", "status": next(statuses)})

    client, (sent, slept) = _fake([answer], backoff_base=0.1)

    assert client.wait_for_job("job_1", timeout=30)["status"] == "succeeded"
    assert [request.url.path for request in sent].count("/v1/jobs/job_1/events") == 3
    assert slept == [0.2, 0.4]  # each empty stream waits longer before the next


def test_a_job_that_never_ends_times_out_even_when_its_streams_are_empty() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, text="", headers={"Content-Type": "text/event-stream"})
        return httpx.Response(200, json={"id": "job_1", "status": "queued"})

    client, _ = _fake([answer], backoff_base=0.01)
    with pytest.raises(Timeout) as waited:
        client.wait_for_job("job_1", timeout=0.3)
    assert waited.value.job_id == "job_1"
