"""Request ids: a sane X-Request-Id is kept and answered, anything else is replaced by a new one
(never echoed); problems carry it; the job a request submits keeps it; each request's log lines
carry its own id."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.db.models import Job, Model
from goshen.logs import JsonFormatter
from tests.fixtures.accounts import Account

NEW_ID = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "sent",
    ["req-1", "0af7651916cd43dd8448eb211c80319c", "a.b:c_d-E", "x" * 128],
)
def test_a_sane_request_id_is_kept_and_answered(client: TestClient, sent: str) -> None:
    answer = client.get("/healthz", headers={"X-Request-Id": sent})
    assert answer.status_code == 200
    assert answer.headers["X-Request-Id"] == sent


@pytest.mark.parametrize(
    "sent",
    [
        "",
        "x" * 129,  # longer than the jobs table keeps
        "has space",
        "semi;colon",
        "<script>",
        'quote"d',
        "new\tline",
        "ünïcode",
        "/slash",
    ],
)
def test_an_unsafe_request_id_is_replaced_not_echoed(client: TestClient, sent: str) -> None:
    answer = client.get("/healthz", headers=[(b"X-Request-Id", sent.encode("utf-8"))])
    given = answer.headers["X-Request-Id"]
    assert answer.status_code == 200
    assert given != sent and NEW_ID.fullmatch(given)


def test_every_request_without_one_gets_a_new_id(client: TestClient) -> None:
    ids = {client.get("/healthz").headers["X-Request-Id"] for _ in range(3)}
    assert len(ids) == 3 and all(NEW_ID.fullmatch(request_id) for request_id in ids)


def test_a_problem_carries_the_request_id(client: TestClient, developer: Account) -> None:
    answer = client.get(
        "/v1/jobs/job_nonexistent", headers=developer.headers | {"X-Request-Id": "trace-me-404"}
    )
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["request_id"] == "trace-me-404" == answer.headers["X-Request-Id"]


@pytest.fixture
def submit_log() -> Iterator[io.StringIO]:
    """What serving.jobs.submit logs, as JSON lines (goshen.logs), formatted as it logs them."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("serving.jobs.submit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_job_keeps_the_request_id_that_submitted_it_and_its_log_line_carries_it(
    client: TestClient,
    developer: Account,
    catalog_model: Model,
    sessions: sessionmaker[Session],
    submit_log: io.StringIO,
) -> None:
    answer = client.post(
        "/v1/generate",
        json={"model": catalog_model.name, "input": {"digit": 2}},
        headers=developer.headers | {"X-Request-Id": "client-req-42"},
    )
    other = client.post(
        "/v1/generate",
        json={"model": catalog_model.name, "input": {"digit": 3}},
        headers=developer.headers,
    )
    assert answer.status_code == other.status_code == 201, answer.text
    job, other_job = answer.json(), other.json()
    assert job["request_id"] == "client-req-42"
    assert other_job["request_id"] == other.headers["X-Request-Id"] != "client-req-42"
    with sessions() as session:
        assert session.get_one(Job, job["id"]).request_id == "client-req-42"
    again = client.get(f"/v1/jobs/{job['id']}", headers=developer.headers)
    assert again.json()["request_id"] == "client-req-42"
    # The line about each job carries that job's request id, not the other's.
    lines = [json.loads(line) for line in submit_log.getvalue().splitlines()]
    queued = {line["job_id"]: line["request_id"] for line in lines}
    assert queued == {job["id"]: "client-req-42", other_job["id"]: other_job["request_id"]}
    assert {line["message"] for line in lines} == {
        f"queued job {job['id']} for {catalog_model.name}",
        f"queued job {other_job['id']} for {catalog_model.name}",
    }
