"""The edge on /predict, which is served ahead of FastAPI's stack inside the edge alone: a body
over the cap and an unexpected error are answered as on every other route, with the request's
id, and counted by status under the route's template."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from goshen.config import Settings
from goshen.db.models import Role
from serving.app import create_app
from serving.routes import predict
from tests.fixtures.accounts import Account
from tests.serving.http.metrics_scrape import samples, value

ROUTE = "/v1/models/{name}/predict"


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    capped = settings.model_copy(update={"max_request_bytes": 1000})
    with TestClient(create_app(capped)) as client:
        yield client


@pytest.fixture
def developer(make_account: Callable[..., Account]) -> Account:
    return make_account(Role.developer)


def _answered(api: TestClient, status: str) -> float | None:
    scraped = samples(api.get("/metrics").text)
    return value(scraped, "goshen_http_requests_total", method="POST", route=ROUTE, status=status)


def test_a_predict_body_over_the_cap_answers_413_with_the_request_id(
    api: TestClient, developer: Account
) -> None:
    answer = api.post(
        "/v1/models/digits-classifier/predict",
        content=b'{"inputs": [' + b"1," * 1000 + b"1]}",
        headers={**developer.headers, "Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/problem+json"
    assert "GOSHEN_MAX_REQUEST_BYTES" in answer.json()["detail"]
    assert answer.headers["X-Request-ID"] == answer.json()["request_id"]
    assert _answered(api, "413") == 1


def test_an_unexpected_error_on_predict_answers_500_with_the_request_id(
    api: TestClient,
    developer: Account,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail(_raw: bytes) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(predict, "_body_inputs", fail)
    with caplog.at_level(logging.ERROR, logger="serving.http.problems"):
        answer = api.post(
            "/v1/models/digits-classifier/predict",
            json={"inputs": [[0.0] * 64]},
            headers={**developer.headers, "X-Request-ID": "client-chosen-id"},
        )
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["X-Request-ID"] == answer.json()["request_id"] == "client-chosen-id"
    assert "injected failure" not in answer.text  # the why goes to the log, not to callers
    assert answer.headers["RateLimit-Policy"]  # counted before it failed: the policy is named
    logged = [record for record in caplog.records if "client-chosen-id" in record.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert _answered(api, "500") == 1
