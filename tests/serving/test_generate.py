"""POST /v1/generate and the job routes, without a worker: validation before anything is queued,
idempotency, Prefer: wait, limits, the catalog's schemas, cancellation and tenant isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, JobStatus, Model, ModelStatus, Role, utcnow
from serving.app import create_app
from tests.fixtures.accounts import Account


@pytest.fixture
def api(serving_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings)) as client:
        yield client


def _generate(api: TestClient, account, to: Model | str, *, headers=None, **body):  # type: ignore[no-untyped-def]
    name = to if isinstance(to, str) else to.name
    payload = {"model": name, "input": {"digit": 4}} | body
    return api.post("/v1/generate", json=payload, headers=account.headers | (headers or {}))


def _count_jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_a_submission_answers_201_with_the_job_and_its_links(
    api: TestClient, developer: Account, catalog_model: Model
) -> None:
    response = _generate(api, developer, catalog_model, input={"digit": 7, "num_images": 3})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["model"] == catalog_model.name
    assert job["version"] == "1"
    assert job["input"]["digit"] == 7 and isinstance(job["input"]["seed"], int)
    assert job["urls"]["get"].endswith(f"/v1/jobs/{job['id']}")
    assert job["urls"]["cancel"].endswith("/cancel") and job["urls"]["stream"].endswith("/events")
    assert response.headers["Location"] == job["urls"]["get"]
    assert not {"claim_token", "lease_owner", "idempotency_key", "batch_key"} & set(job)


@pytest.mark.parametrize(
    ("model_input", "field"),
    [
        ({"digit": 10}, "input.digit"),
        ({"digit": -1}, "input.digit"),
        ({}, "input.digit"),
        ({"digit": 1, "num_images": 17}, "input.num_images"),
        ({"digit": 1, "num_inference_steps": 201}, "input.num_inference_steps"),
        ({"digit": 1, "scheduler": "euler"}, "input.scheduler"),
        ({"digit": 1, "seed": 2**32}, "input.seed"),
        ({"digit": True}, "input.digit"),  # the published schema says integer: no coercion
        ({"digit": "3"}, "input.digit"),
        ({"digit": 1, "seed": "7"}, "input.seed"),
        ({"digit": 1, "prompt": "a cat"}, "input.prompt"),
    ],
)
def test_out_of_bounds_input_is_a_422_naming_the_field_and_queues_nothing(
    api: TestClient,
    developer: Account,
    catalog_model: Model,
    sessions: sessionmaker[Session],
    model_input: dict[str, Any],
    field: str,
) -> None:
    response = _generate(api, developer, catalog_model, input=model_input)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]]
    assert _count_jobs(sessions) == 0


@pytest.mark.parametrize("field", ["status", "priority", "owner", "cost_micros", "user_id"])
def test_server_owned_fields_are_refused(
    api: TestClient, developer: Account, catalog_model: Model, field: str
) -> None:
    response = _generate(api, developer, catalog_model, **{field: "x"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


def test_unknown_and_private_models_answer_404(
    api: TestClient,
    developer: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
    catalog_model: Model,
) -> None:
    assert _generate(api, developer, "no-such-model").status_code == 404
    other = make_account()
    with session_scope(sessions) as session:
        session.execute(
            update(Model)
            .where(Model.id == catalog_model.id)
            .values(visibility="private", owner_id=other.user_id)
        )
    assert _generate(api, developer, catalog_model).status_code == 404
    assert _generate(api, other, catalog_model).status_code == 201
    assert api.get(f"/v1/models/{catalog_model.name}", headers=developer.headers).status_code == 404


def test_a_model_without_a_live_version_answers_409(
    api: TestClient, developer: Account, make_model: Callable[..., Model]
) -> None:
    model = make_model(version=None)
    response = _generate(api, developer, model)
    assert response.status_code == 409
    assert "no live version" in response.json()["detail"]


def test_a_disabled_model_takes_no_jobs(
    api: TestClient, developer: Account, catalog_model: Model, sessions: sessionmaker[Session]
) -> None:
    with session_scope(sessions) as session:
        session.execute(
            update(Model).where(Model.id == catalog_model.id).values(status=ModelStatus.disabled)
        )
    assert _generate(api, developer, catalog_model).status_code == 409


def test_a_key_without_the_generate_scope_gets_403(
    api: TestClient, make_account: Callable[..., Account], catalog_model: Model
) -> None:
    reader = make_account(scopes=["jobs"])
    assert _generate(api, reader, catalog_model).status_code == 403


def test_the_same_idempotency_key_and_body_return_the_same_job(
    api: TestClient, developer: Account, catalog_model: Model, sessions: sessionmaker[Session]
) -> None:
    key = {"Idempotency-Key": "order-1234"}
    first = _generate(api, developer, catalog_model, headers=key)
    again = _generate(api, developer, catalog_model, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _count_jobs(sessions) == 1
    other_body = _generate(api, developer, catalog_model, headers=key, input={"digit": 5})
    assert other_body.status_code == 422
    assert "different request body" in other_body.json()["detail"]
    assert _count_jobs(sessions) == 1


def test_idempotency_keys_are_per_account_and_expire_after_a_day(
    api: TestClient,
    developer: Account,
    make_account: Callable[..., Account],
    catalog_model: Model,
    sessions: sessionmaker[Session],
) -> None:
    key = {"Idempotency-Key": "shared-name"}
    mine = _generate(api, developer, catalog_model, headers=key).json()
    theirs = _generate(api, make_account(), catalog_model, headers=key).json()
    assert mine["id"] != theirs["id"]
    with session_scope(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == mine["id"])
            .values(created_at=utcnow() - timedelta(hours=25))
        )
    fresh = _generate(api, developer, catalog_model, headers=key).json()
    assert fresh["id"] != mine["id"]


def test_a_request_rejected_by_validation_does_not_consume_its_key(
    api: TestClient, developer: Account, catalog_model: Model
) -> None:
    key = {"Idempotency-Key": "retry-me"}
    bad = _generate(api, developer, catalog_model, headers=key, input={"digit": 99})
    assert bad.status_code == 422
    assert (
        _generate(api, developer, catalog_model, headers=key, input={"digit": 9}).status_code == 201
    )


def test_concurrent_requests_with_one_key_make_one_job(
    serving_settings: Settings,
    developer: Account,
    catalog_model: Model,
    sessions: sessionmaker[Session],
) -> None:
    with TestClient(create_app(serving_settings)) as api:
        barrier = threading.Barrier(8)
        ids: list[str] = []

        def send() -> None:
            barrier.wait()
            response = _generate(api, developer, catalog_model, headers={"Idempotency-Key": "race"})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert _count_jobs(sessions) == 1


@pytest.mark.parametrize("prefer", ["wait=61", "wait=0", "wait=soon", "waiting"])
def test_a_prefer_wait_out_of_bounds_is_refused(
    api: TestClient, developer: Account, catalog_model: Model, prefer: str
) -> None:
    response = _generate(api, developer, catalog_model, headers={"Prefer": prefer})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Prefer"


def test_prefer_wait_answers_when_the_time_is_up(
    api: TestClient, developer: Account, catalog_model: Model
) -> None:
    response = _generate(api, developer, catalog_model, headers={"Prefer": "respond-async, wait=1"})
    assert response.status_code == 201
    assert response.json()["status"] == "queued"  # no worker runs in this test
    assert response.headers["Preference-Applied"] == "wait=1"


def test_a_webhook_to_a_private_address_is_refused_at_creation(
    client: TestClient,
    developer: Account,
    sessions: sessionmaker[Session],
    make_model: Callable[..., Model],
) -> None:
    model = make_model()
    for url in ("http://10.0.0.5/hook", "http://127.0.0.1:9/hook", "http://[::1]/hook"):
        response = _generate(client, developer, model, webhook=url)
        assert response.status_code == 422, url
        assert response.json()["errors"][0]["field"] == "webhook"
    assert _count_jobs(sessions) == 0


def test_the_active_job_cap_answers_429_with_retry_after(
    serving_settings: Settings, developer: Account, catalog_model: Model
) -> None:
    capped = Settings(
        **{**serving_settings.model_dump(), "_env_file": None, "max_active_jobs_per_user": 2}
    )
    with TestClient(create_app(capped)) as api:
        assert [_generate(api, developer, catalog_model).status_code for _ in range(2)] == [
            201,
            201,
        ]
        refused = _generate(api, developer, catalog_model)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "GOSHEN_MAX_ACTIVE_JOBS_PER_USER" in refused.json()["detail"]


def test_the_model_page_publishes_its_input_schema_with_examples(
    api: TestClient, developer: Account, catalog_model: Model
) -> None:
    page = api.get(f"/v1/models/{catalog_model.name}", headers=developer.headers).json()
    schema = page["input_schema"]
    assert schema["properties"]["digit"]["maximum"] == 9
    assert schema["properties"]["num_images"]["maximum"] == 16
    assert schema["properties"]["num_inference_steps"]["anyOf"][0]["maximum"] == 200
    assert schema["additionalProperties"] is False
    assert page["examples"] and page["pricing"] == {"unit": "image", "price_micros": 1000}
    listed = api.get("/v1/models", headers=developer.headers).json()["data"]
    assert catalog_model.name in [model["name"] for model in listed]
    assert "digits-diffusion" in [model["name"] for model in listed]  # the built-in entry


def test_listing_filters_by_status_and_model_and_paginates(
    api: TestClient, developer: Account, catalog_model: Model, make_model: Callable[..., Model]
) -> None:
    other = make_model()
    ids = [_generate(api, developer, catalog_model).json()["id"] for _ in range(3)]
    _generate(api, developer, other)
    canceled = api.post(f"/v1/jobs/{ids[0]}/cancel", headers=developer.headers).json()
    assert canceled["status"] == "canceled" and canceled["completed_at"]
    by_model = api.get(f"/v1/jobs?model={catalog_model.name}&limit=2", headers=developer.headers)
    page = by_model.json()
    assert [job["id"] for job in page["data"]] == ids[:0:-1] and page["has_more"]
    rest = api.get(
        f"/v1/jobs?model={catalog_model.name}&cursor={page['next_cursor']}",
        headers=developer.headers,
    ).json()
    assert [job["id"] for job in rest["data"]] == [ids[0]]
    queued = api.get("/v1/jobs?status=canceled", headers=developer.headers).json()["data"]
    assert [job["id"] for job in queued] == [ids[0]]


def test_cancelling_an_ended_job_answers_409(
    api: TestClient, developer: Account, catalog_model: Model
) -> None:
    job = _generate(api, developer, catalog_model).json()
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=developer.headers).status_code == 200
    again = api.post(f"/v1/jobs/{job['id']}/cancel", headers=developer.headers)
    assert again.status_code == 409


def test_another_users_job_is_404_on_every_job_route(
    api: TestClient, developer: Account, make_account: Callable[..., Account], catalog_model: Model
) -> None:
    job = _generate(api, developer, catalog_model).json()
    for intruder in (make_account(), make_account(Role.admin)):
        headers = intruder.headers
        assert api.get(f"/v1/jobs/{job['id']}", headers=headers).status_code == 404
        assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 404
        assert api.get(f"/v1/jobs/{job['id']}/events", headers=headers).status_code == 404
        assert api.get("/v1/jobs", headers=headers).json()["data"] == []
    assert api.get(f"/v1/jobs/{job['id']}", headers=developer.headers).json()["status"] == (
        JobStatus.queued
    )


def test_the_event_stream_of_a_canceled_job_ends_with_done(
    api: TestClient, developer: Account, catalog_model: Model
) -> None:
    job = _generate(api, developer, catalog_model).json()
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=developer.headers)
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=developer.headers) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        body = "".join(stream.iter_text())
    kinds = [
        line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event:")
    ]
    assert kinds == ["status", "status", "done"]
    first_id = int(body.split("id: ")[1].split("\n")[0])
    resumed_headers = developer.headers | {"Last-Event-ID": str(first_id)}
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=resumed_headers) as stream:
        resumed = "".join(stream.iter_text())
    assert resumed.count("event:") == 2


def test_a_body_over_the_request_limit_answers_413_and_queues_nothing(
    api: TestClient, developer: Account, catalog_model: Model, sessions: sessionmaker[Session]
) -> None:
    huge = {"model": catalog_model.name, "input": {"digit": 1, "padding": "x" * 2_000_000}}
    response = api.post("/v1/generate", json=huge, headers=developer.headers)
    assert response.status_code == 413
    assert "GOSHEN_MAX_REQUEST_BYTES" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "x", "input": {"p": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'

    streamed = api.post(
        "/v1/generate",
        content=chunks(),
        headers=developer.headers | {"Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    assert _count_jobs(sessions) == 0


def test_a_replay_that_waits_holds_no_lock(
    serving_settings: Settings, developer: Account, catalog_model: Model
) -> None:
    """A retried request with `Prefer: wait` must not stall other submissions (on SQLite every
    open transaction holds the write lock)."""
    with TestClient(create_app(serving_settings)) as api:
        key = {"Idempotency-Key": "retried"}
        assert _generate(api, developer, catalog_model, headers=key).status_code == 201
        waiting = threading.Thread(
            target=_generate,
            args=(api, developer, catalog_model),
            kwargs={"headers": key | {"Prefer": "wait=4"}},
        )
        waiting.start()
        time.sleep(0.5)
        started = time.monotonic()
        other = _generate(api, developer, catalog_model)
        elapsed = time.monotonic() - started
        waiting.join()
    assert other.status_code == 201
    assert elapsed < 3, f"a submission waited {elapsed:.1f} s behind a waiting replay"


def test_a_stream_resumed_after_done_ends_at_once(
    api: TestClient, developer: Account, catalog_model: Model
) -> None:
    job = _generate(api, developer, catalog_model).json()
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=developer.headers)
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=developer.headers) as stream:
        last_id = [line for line in stream.iter_lines() if line.startswith("id: ")][-1][4:]
    headers = developer.headers | {"Last-Event-ID": last_id}
    started = time.monotonic()
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers) as stream:
        assert "".join(stream.iter_text()) == ""
    assert time.monotonic() - started < 5
