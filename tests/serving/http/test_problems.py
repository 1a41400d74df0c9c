"""Unexpected errors on a real uvicorn: a 500 problem with a request id, and a connection that
stays usable for the client's next request."""

from __future__ import annotations

import logging

import httpx
import pytest
from sqlalchemy import Engine

from goshen.config import Settings
from serving.routes import health


def _fail(_engine: Engine) -> dict[str, object]:
    raise RuntimeError("injected failure")


def test_an_unexpected_error_answers_500_with_a_request_id_and_keeps_the_connection(
    live_api: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(health, "_check_database", _fail)
    with (
        caplog.at_level(logging.ERROR, logger="serving.http.problems"),
        httpx.Client(base_url=live_api.api_url) as http,
    ):
        failed = http.get("/readyz")
        monkeypatch.undo()
        answered = http.get("/healthz")
        again = http.get("/readyz")

    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/problem+json"
    assert "connection" not in failed.headers  # kept alive, not closed
    request_id = failed.json()["request_id"]
    assert failed.headers["X-Request-ID"] == request_id and request_id in failed.json()["detail"]
    assert "injected failure" not in failed.text  # the why goes to the log, not to callers
    assert answered.status_code == 200 and again.status_code == 200
    # The same connection answered: the server did not drop it after the 500.
    assert answered.extensions["network_stream"] is failed.extensions["network_stream"]
    logged = [record for record in caplog.records if request_id in record.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "injected failure" in str(logged[0].exc_info[1])
