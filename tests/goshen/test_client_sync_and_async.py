"""`Goshen` and `AsyncGoshen` (goshen.client_sync, goshen.client_async) pass the same tests,
end to end: uvicorn serving the API on PostgreSQL, a worker running a tiny random-weights digits
model from a real MLflow registry, and an ONNX classifier deployed for predictions.

Every test takes `connect` (tests/fixtures/sdk.py), which makes a `Goshen` in one run of it and
an `AsyncGoshen` driven through `Blocking` in the other, so one body checks both. Faults are
injected between the SDK and the real server by `Faults`, a transport that wraps httpx's own: it
loses one answer after the server acted, or cuts an event stream after a number of events, as a
proxy or a network would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.client import (
    DoneEvent,
    InsufficientCredits,
    InvalidInput,
    JobFailed,
    NotFound,
    OutputEvent,
    ProgressEvent,
    RateLimited,
    StatusEvent,
    Timeout,
)
from goshen.config import Settings
from goshen.db.models import Job, Model
from tests.fixtures.accounts import Account, create_account
from tests.fixtures.models import RegisteredModel, deploy_classifier
from tests.fixtures.sdk import Faults

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])
STEPS = 6  # denoising steps of each test job: its progress events


@pytest.fixture
def platform(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    start_worker: Callable[..., threading.Event],
    digits_model: Model,
) -> Iterator[Settings]:
    """The API and one worker, each denoising step slowed a little so a test can act mid-job."""
    with run_api(serving_settings) as served:
        start_worker(step_seconds=0.05)
        yield served


def _input(**overrides: Any) -> dict[str, Any]:
    return {"digit": 7, "num_images": 2, "num_inference_steps": STEPS, "seed": 1} | overrides


def test_run_generates_and_the_images_download(
    platform: Settings, developer: Account, digits_model: Model, connect: Callable[..., Any]
) -> None:
    sdk = connect(platform.api_url, developer.key)
    before = sdk.balance()

    job = sdk.run(digits_model.name, _input(), timeout=120)

    assert job.status == "succeeded" and job.ended and len(job.images) == 2
    assert job.raw["id"] == job.id and job.created_at.tzinfo is not None
    pngs = [sdk.download(image.url) for image in job.images]
    assert all(png.startswith(b"\x89PNG") for png in pngs)
    assert (
        job.cost_micros and sdk.balance().balance_micros == before.balance_micros - job.cost_micros
    )
    usage = sdk.usage()
    assert usage.totals.images == 2 and usage.totals.cost_micros == job.cost_micros
    assert [row.model for row in usage.by_model] == [digits_model.name]
    assert [listed.id for listed in sdk.list_jobs(status="succeeded")] == [job.id]


def test_a_submitted_job_streams_typed_events_and_its_handle_finds_it_again(
    platform: Settings, developer: Account, digits_model: Model, connect: Callable[..., Any]
) -> None:
    sdk = connect(platform.api_url, developer.key)
    handle = sdk.submit(digits_model.name, _input(num_images=1))

    events = list(handle.stream())

    statuses = [event.status for event in events if isinstance(event, StatusEvent)]
    assert statuses == ["queued", "running", "succeeded"]
    steps = [event.step for event in events if isinstance(event, ProgressEvent)]
    assert steps == list(range(1, STEPS + 1))
    outputs = [event for event in events if isinstance(event, OutputEvent)]
    assert len(outputs) == 1 and len(outputs[0].images) == 1
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "succeeded"
    assert [event.id for event in events] == sorted({event.id for event in events})
    again = sdk.job(handle.id)
    assert again.wait(timeout=30).images[0].url.startswith("http")
    assert again.get().status == "succeeded"


def test_a_dropped_event_stream_resumes_without_losing_an_event(
    platform: Settings, developer: Account, digits_model: Model, connect: Callable[..., Any]
) -> None:
    faults = Faults(cut_after=3)
    job = connect(platform.api_url, developer.key).create_job(digits_model.name, _input())
    cut = connect(platform.api_url, developer.key, transport=faults)

    resumed = [event.id for event in cut.stream(job.id)]

    whole = [event.id for event in connect(platform.api_url, developer.key).stream(job.id)]
    assert resumed == whole  # every event, once, in order
    streams = faults.to(f"/v1/jobs/{job.id}/events")
    assert len(streams) == 2
    assert "last-event-id" not in streams[0].request.headers
    assert streams[1].request.headers["last-event-id"] == str(whole[2])


def test_a_real_429_is_retried_after_its_retry_after(
    settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    developer: Account,
    connect: Callable[..., Any],
) -> None:
    limited = Settings(
        **{**settings.model_dump(), "_env_file": None, "rate_limit_default": "2/second"}
    )
    faults = Faults()
    with run_api(limited) as served:
        patient = connect(served.api_url, developer.key, transport=faults)
        balances = [patient.balance() for _ in range(5)]  # over 2 a second: at least one 429
        impatient = connect(served.api_url, developer.key, max_retries=0)
        with pytest.raises(RateLimited) as refused:
            for _ in range(5):
                impatient.balance()

    assert len(balances) == 5
    retried = [
        (refusal, retry)
        for refusal, retry in zip(faults.exchanges, faults.exchanges[1:], strict=False)
        if refusal.status == 429
    ]
    assert retried
    for refusal, retry in retried:
        assert retry.sent_at - refusal.answered_at >= float(refusal.headers["Retry-After"])
        assert retry.status == 200
    assert refused.value.retry_after == 1


def test_a_post_whose_answer_was_lost_is_retried_with_its_key_and_makes_one_job(
    live_api: Settings,
    developer: Account,
    make_model: Callable[..., Model],
    sessions: sessionmaker[Session],
    connect: Callable[..., Any],
) -> None:
    model = make_model()  # no worker here: the job stays queued
    faults = Faults(lose="POST /v1/generate")
    sdk = connect(live_api.api_url, developer.key, transport=faults)

    handle = sdk.submit(model.name, {"digit": 1})

    sent = faults.to("/v1/generate")
    assert len(sent) == 2 and all(exchange.status == 201 for exchange in sent)
    keys = {exchange.request.headers["idempotency-key"] for exchange in sent}
    assert len(keys) == 1
    assert sent[1].headers["idempotent-replayed"] == "true"
    with sessions() as session:
        made = session.scalar(select(func.count()).select_from(Job).where(Job.model_id == model.id))
    assert made == 1 and handle.id == sent[0].headers["location"].rsplit("/", 1)[1]


def test_waiting_past_the_timeout_raises_timeout_with_the_job_id_and_a_cancel_fails_it(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    start_worker: Callable[..., threading.Event],
    developer: Account,
    digits_model: Model,
    connect: Callable[..., Any],
) -> None:
    with run_api(serving_settings) as served:
        start_worker(step_seconds=1)  # a job takes STEPS seconds
        sdk = connect(served.api_url, developer.key)
        with pytest.raises(Timeout) as late:
            sdk.run(digits_model.name, _input(num_images=1), timeout=1.5)
        assert isinstance(late.value, TimeoutError)
        job_id = late.value.job_id
        assert sdk.get_job(job_id).status in ("queued", "running")
        sdk.cancel(job_id)
        with pytest.raises(JobFailed) as failed:
            sdk.wait(job_id, timeout=60)
        ended = sdk.wait(job_id, raise_on_failure=False)
    assert failed.value.job.status == "canceled" and failed.value.job.id == job_id
    assert ended.status == "canceled"


def test_problems_are_typed_errors(
    live_api: Settings,
    sessions: sessionmaker[Session],
    digits_model: Model,
    connect: Callable[..., Any],
) -> None:
    poor = create_account(sessions, credits_micros=1)
    sdk = connect(live_api.api_url, poor.key)

    with pytest.raises(InsufficientCredits) as short:
        sdk.create_job(digits_model.name, _input())
    assert short.value.status_code == 402
    with pytest.raises(InvalidInput) as wrong:
        sdk.create_job(digits_model.name, {"digit": 12})
    assert any("digit" in field for field, _ in wrong.value.fields)
    with pytest.raises(NotFound):
        sdk.get_job("job_00000000000000000000000000")


def test_predict_keys_and_the_ledger(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    admin: Account,
    developer: Account,
    register_classifier: Callable[..., RegisteredModel],
    connect: Callable[..., Any],
) -> None:
    register_classifier("sdk-digits-classifier")
    with run_api(serving_settings) as served:
        with httpx.Client(base_url=served.api_url, timeout=120) as api:
            deploy_classifier(api, admin.headers, "sdk-digits-classifier")
        sdk = connect(served.api_url, developer.key)
        _predict_and_manage_keys(sdk)


def _predict_and_manage_keys(sdk: Any) -> None:
    prediction = sdk.predict("sdk-digits-classifier", {"features": [[0.0] * 64, [16.0] * 64]})
    assert prediction.labels is not None and len(prediction.labels) == 2
    assert prediction.probabilities is not None and len(prediction.probabilities[0]) == 10

    created = sdk.create_key("ci", scopes=["generate"])
    assert created.key and created.key.startswith("gsk_") and "key=" not in repr(created)
    assert created.id in [key.id for key in sdk.list_keys()]
    assert sdk.revoke_key(created.id).revoked_at is not None
    kinds = [entry.kind for entry in sdk.ledger()]  # newest first
    assert kinds == ["hold", "grant"]  # the new user's credit, then the prediction's charge


def test_a_dataset_upload_reports_its_progress(
    live_api: Settings, developer: Account, tmp_path: Path, connect: Callable[..., Any]
) -> None:
    table = tmp_path / "rows.csv"
    table.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20_000)))
    reported: list[tuple[int, int]] = []
    sdk = connect(live_api.api_url, developer.key)

    dataset = sdk.upload_dataset(
        table, "rows", kind="tabular", target="y", on_progress=lambda *sent: reported.append(sent)
    )

    size = table.stat().st_size
    assert dataset.status == "uploaded" and dataset.name == "rows"
    assert reported and reported[-1] == (size, size) and len(reported) > 1
    assert [sent for sent, _ in reported] == sorted(sent for sent, _ in reported)
    assert sdk.get_dataset(dataset.id).id == dataset.id
    assert [listed.id for listed in sdk.list_datasets()] == [dataset.id]
    sdk.delete_dataset(dataset.id)
    with pytest.raises(NotFound):
        sdk.get_dataset(dataset.id)
    assert json.loads(json.dumps(dataset.raw))["id"] == dataset.id
