"""GET /v1/jobs/{id} with `Prefer: wait`: long polling, held until the job ends or the time is
up, for the SDK's `wait` and for clients that cannot hold the event stream open. No worker runs
here, so a job stays queued until it is canceled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from goshen.config import Settings
from goshen.db.models import Model
from serving.app import create_app
from tests.fixtures.accounts import Account


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def job_id(api: TestClient, developer: Account, make_model: Callable[..., Model]) -> str:
    body = {"model": make_model().name, "input": {"digit": 4}}
    created = api.post("/v1/generate", json=body, headers=developer.headers)
    assert created.status_code == 201, created.text
    job: str = created.json()["id"]
    return job


def test_a_read_is_held_until_the_time_is_up(
    api: TestClient, developer: Account, job_id: str
) -> None:
    started = time.monotonic()
    response = api.get(f"/v1/jobs/{job_id}", headers=developer.headers | {"Prefer": "wait=1"})
    assert response.status_code == 200
    assert time.monotonic() - started >= 1
    assert response.json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"
    plain = api.get(f"/v1/jobs/{job_id}", headers=developer.headers)
    assert "Preference-Applied" not in plain.headers


def test_a_read_answers_as_soon_as_the_job_ends(
    api: TestClient, developer: Account, job_id: str
) -> None:
    def cancel_soon() -> None:
        time.sleep(0.5)
        api.post(f"/v1/jobs/{job_id}/cancel", headers=developer.headers)

    canceler = threading.Thread(target=cancel_soon)
    canceler.start()
    started = time.monotonic()
    response = api.get(f"/v1/jobs/{job_id}", headers=developer.headers | {"Prefer": "wait=60"})
    canceler.join()
    assert response.json()["status"] == "canceled"
    assert time.monotonic() - started < 30  # the end, not the minute, answered it


def test_another_users_job_is_not_found_without_waiting(
    api: TestClient, make_account: Callable[..., Account], job_id: str
) -> None:
    stranger = make_account()
    started = time.monotonic()
    response = api.get(f"/v1/jobs/{job_id}", headers=stranger.headers | {"Prefer": "wait=60"})
    assert response.status_code == 404
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("prefer", ["wait=61", "wait=0", "wait=soon"])
def test_a_prefer_wait_out_of_bounds_is_refused(
    api: TestClient, developer: Account, job_id: str, prefer: str
) -> None:
    response = api.get(f"/v1/jobs/{job_id}", headers=developer.headers | {"Prefer": prefer})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Prefer"
