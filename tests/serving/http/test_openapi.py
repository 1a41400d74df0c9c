"""The OpenAPI document tells the truth: the statuses each route answers, errors as problem+json,
request schemas that refuse what the API refuses, links from creations, and 405s naming every
allowed method."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from goshen import accounts
from goshen.config import Settings
from goshen.db import make_engine
from serving.app import create_app
from serving.http.openapi import RATE_LIMITED
from tests.fixtures.accounts import Account


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app().openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def test_every_error_is_documented_as_problem_json(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"title", "status", "detail"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in _operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400 or path == "/readyz":  # /readyz's 503 is its report
                continue
            content = response["content"]
            assert list(content) == ["application/problem+json"], (method, path, status)
            # Problems with members of their own have their own schema, a Problem's and more.
            schemas = ["Problem"]
            if status == "402":  # what credit or a spend cap refuses
                schemas = ["InsufficientCreditProblem", "SpendCapProblem"]
            if status == "429" and response["description"] == RATE_LIMITED:
                schemas = ["RateLimitProblem"]  # where the route has no 429 (a cap) of its own
            refs = [{"$ref": f"#/components/schemas/{schema}"} for schema in schemas]
            expected = refs[0] if len(refs) == 1 else {"oneOf": refs}
            assert content["application/problem+json"]["schema"] == expected, (method, path)
    credit = document["components"]["schemas"]["InsufficientCreditProblem"]
    assert set(problem["properties"]) < set(credit["properties"])
    assert set(credit["required"]) == set(problem["required"]) | {
        "balance",
        "available",
        "required",
    }


def test_each_kind_of_route_documents_the_statuses_it_answers(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        statuses = set(operation["responses"])
        assert "500" in statuses, (method, path)
        if operation.get("security"):
            assert {"401", "403"} <= statuses, (method, path)
        if "{" in path:
            assert "404" in statuses, (method, path)
        if "requestBody" in operation:
            assert {"400", "413", "415", "422"} <= statuses, (method, path)
        if path != "/healthz":
            assert "503" in statuses, (method, path)
    generate = document["paths"]["/v1/generate"]["post"]["responses"]
    assert {"409", "429"} <= set(generate)
    assert "409" in document["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]


def test_key_scopes_are_documented_as_they_are_checked(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["KeyCreate"]["properties"]["scopes"]
    listed = next(option for option in schema["anyOf"] if option.get("type") == "array")
    assert listed["minItems"] == 1
    assert "admin" in listed["items"]["enum"] and "generate" in listed["items"]["enum"]


def test_creations_link_to_what_they_created(document: dict[str, Any]) -> None:
    links = document["paths"]["/v1/generate"]["post"]["responses"]["201"]["links"]
    targets = {link["operationId"]: link["parameters"] for link in links.values()}
    assert targets["get_job_v1_jobs__job_id__get"] == {"job_id": "$response.body#/id"}
    # An event stream stays open while its job lives: no link leads a tool into one.
    assert not any("events" in operation for operation in targets)
    operation_ids = {operation.get("operationId") for _, _, operation in _operations(document)}
    for _, _, operation in _operations(document):
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                assert link["operationId"] in operation_ids


def test_a_405_names_every_method_the_path_answers(client: TestClient, developer: Account) -> None:
    answer = client.put("/v1/keys/key_00000000000000000000000000", headers=developer.headers)

    assert answer.status_code == 405
    assert answer.headers["allow"] == "DELETE, GET, PATCH"
    assert answer.headers["content-type"] == "application/problem+json"
    assert "DELETE, GET, PATCH" in answer.json()["detail"]
    assert client.request("TRACE", "/v1/keys").headers["allow"] == "GET, POST"


def test_strict_bodies_refuse_numbers_for_booleans(client: TestClient, admin: Account) -> None:
    other = client.post("/v1/admin/users", json={"email": "x@example.com"}, headers=admin.headers)
    user = other.json()["id"]

    for body in ({"disabled": 0}, {"disabled": "true"}, {"name": "\x0b"}):
        answer = client.patch(f"/v1/admin/users/{user}", json=body, headers=admin.headers)
        assert answer.status_code == 422, (body, answer.text)


def test_a_database_that_does_not_answer_is_a_503_with_retry_after(
    settings: Settings, developer: Account
) -> None:
    """PostgreSQL on a port nobody listens on stands in for a database that went away."""
    app = create_app(settings)
    with TestClient(app) as client:
        engine = make_engine("postgresql://postgres@127.0.0.1:9/goshen", timeout=2)
        gone = sessionmaker(engine)
        app.state.api = replace(app.state.api, sessions=gone, read_sessions=gone)
        try:
            answer = client.get("/v1/keys", headers=developer.headers)
        finally:
            engine.dispose()

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.headers["content-type"] == "application/problem+json"
    assert "127.0.0.1" not in answer.text and "postgres" not in answer.text


@pytest.mark.parametrize(
    ("message", "status"),
    [("database is locked", 503), ("no such table: api_keys", 500)],
)
def test_only_a_database_away_or_busy_is_a_503(
    client: TestClient,
    developer: Account,
    monkeypatch: pytest.MonkeyPatch,
    message: str,
    status: int,
) -> None:
    """A schema that drifted is a bug to fix (500), not an outage; both carry the request id."""

    def fail(*_args: object) -> None:
        raise OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))

    monkeypatch.setattr(accounts, "find_principal", fail)
    answer = client.get("/v1/keys", headers=developer.headers)

    assert answer.status_code == status
    assert answer.json()["request_id"] == answer.headers["X-Request-Id"]
