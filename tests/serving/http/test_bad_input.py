"""NUL bytes, control characters and malformed ids: a 4xx problem+json that names what to fix,
and never a query carrying them (PostgreSQL refuses NUL in text with a 500)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.db import session_scope
from goshen.db.models import Model, ModelRuntime, ModelStatus, PricingUnit, Visibility
from goshen.ids import id_pattern
from goshen.text import MULTILINE, ONE_LINE
from serving.schemas import CATALOG_NAME_PATTERN
from tests.fixtures.accounts import Account

PROBLEM = "application/problem+json"
UNKNOWN_JOB = "job_01JD0000000000000000000000"

# (method, path, body): each path holds a malformed id or model name.
DEVELOPER_PATHS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/jobs/%00", None),
    ("GET", "/v1/jobs/job_%00/events", None),
    ("POST", "/v1/jobs/%00/cancel", None),
    ("GET", "/v1/jobs/job_01jd0000000000000000000000", None),  # lowercase: not an id
    ("GET", f"/v1/jobs/{UNKNOWN_JOB}%0A", None),
    ("GET", "/v1/datasets/%00", None),
    ("DELETE", "/v1/datasets/%00", None),
    ("GET", "/v1/training-jobs/%00", None),
    ("POST", "/v1/training-jobs/%00/cancel", None),
    ("GET", "/v1/training-jobs/%00/logs", None),
    ("GET", f"/v1/training-jobs/{UNKNOWN_JOB}", None),  # another kind's id
    ("GET", "/v1/keys/%00", None),
    ("DELETE", "/v1/keys/%00", None),
    ("GET", "/v1/models/%00", None),
    ("GET", "/v1/models/Digits_Diffusion", None),
    ("POST", "/v1/models/%00/predict", {"inputs": [[0.0]]}),
    ("POST", "/v1/models/a%0A/predict", {"inputs": [[0.0]]}),
]
ADMIN_PATHS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/admin/users/%00", None),
    ("PATCH", "/v1/admin/users/%00", {"name": "x"}),
    ("POST", "/v1/admin/users/%00/keys", {"name": "x"}),
    ("DELETE", "/v1/admin/keys/%00", None),
    ("GET", "/v1/admin/models/%00", None),
    ("PATCH", "/v1/admin/models/%00", {"description": "x"}),
    ("POST", "/v1/admin/models/%00/deploy", None),
    ("POST", "/v1/admin/models/%00/undeploy", None),
    ("POST", "/v1/admin/models/%00/rollback", None),
]


@pytest.fixture
def statements() -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement the app sends while the test runs, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    yield sent
    event.remove(Engine, "before_cursor_execute", record)


@pytest.fixture
def text_model(sessions: sessionmaker[Session]) -> Model:
    """A ready text-to-image entry (never run here): its input has prompts."""
    model = catalog.generation_entry(
        f"sd-{secrets.token_hex(3)}",
        ModelRuntime.diffusers,
        "not-in-any-registry",
        alias=registry.PRODUCTION,
        live_version="1",
        pricing_unit=PricingUnit.image,
        price_micros=1000,
        visibility=Visibility.public,
        status=ModelStatus.ready,
    )
    with session_scope(sessions) as session:
        session.add(model)
    return model


def _send(
    client: TestClient, account: Account, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    return client.request(method, path, headers=account.headers, **kwargs)


def _refused_fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    return [error["field"] for error in response.json()["errors"]]


def _holds_nul(parameters: Any) -> bool:
    if isinstance(parameters, str):
        return "\x00" in parameters
    if isinstance(parameters, dict):
        return any(_holds_nul(value) for value in parameters.values())
    if isinstance(parameters, list | tuple):
        return any(_holds_nul(value) for value in parameters)
    return False


def _no_nul_reached_the_database(statements: list[tuple[str, Any]]) -> None:
    assert [statement for statement, parameters in statements if _holds_nul(parameters)] == []


def test_malformed_ids_and_names_in_paths_are_not_found(
    client: TestClient,
    developer: Account,
    admin: Account,
    statements: list[tuple[str, Any]],
) -> None:
    calls = [(developer, *call) for call in DEVELOPER_PATHS] + [
        (admin, *call) for call in ADMIN_PATHS
    ]
    answers = {
        (method, path): _send(client, account, method, path, json=body)
        for account, method, path, body in calls
    }
    wrong = {
        call: (response.status_code, response.headers["content-type"])
        for call, response in answers.items()
        if (response.status_code, response.headers["content-type"]) != (404, PROBLEM)
    }
    assert wrong == {}
    assert "job_id" in answers[("GET", "/v1/jobs/%00")].json()["detail"]
    _no_nul_reached_the_database(statements)


def test_well_formed_ids_still_resolve(
    client: TestClient, developer: Account, admin: Account
) -> None:
    own_key = client.get(f"/v1/keys/{developer.key_id}", headers=developer.headers)
    assert own_key.status_code == 200 and own_key.json()["id"] == developer.key_id
    user = client.get(f"/v1/admin/users/{developer.user_id}", headers=admin.headers)
    assert user.status_code == 200 and user.json()["id"] == developer.user_id
    unknown = client.get(f"/v1/jobs/{UNKNOWN_JOB}", headers=developer.headers)
    assert (
        unknown.status_code == 404 and unknown.json()["detail"] == f"no job with id {UNKNOWN_JOB}"
    )
    missing_model = client.post(
        "/v1/models/no-such-model/predict", json={"inputs": [[0.0]]}, headers=developer.headers
    )
    assert missing_model.status_code == 404
    assert "GET /v1/models" in missing_model.json()["detail"]


def test_text_in_json_bodies_refuses_control_characters(
    client: TestClient,
    developer: Account,
    admin: Account,
    catalog_model: Model,
    text_model: Model,
    statements: list[tuple[str, Any]],
) -> None:
    digits = {"model": catalog_model.name, "input": {"digit": 1}}
    prompt = {"model": text_model.name, "input": {"prompt": "a cat"}}
    refusals: list[tuple[Account, str, str, dict[str, Any], str]] = [
        (developer, "POST", "/v1/generate", {**digits, "model": "digits\u0000diffusion"}, "model"),
        (developer, "POST", "/v1/generate", {**digits, "webhook": "https://a\u0000"}, "webhook"),
        (
            developer,
            "POST",
            "/v1/generate",
            {**prompt, "input": {"prompt": "a\u0000"}},
            "input.prompt",
        ),
        (
            developer,
            "POST",
            "/v1/generate",
            {**prompt, "input": {"prompt": "a", "negative_prompt": "\u001b[2J"}},
            "input.negative_prompt",
        ),
        (
            developer,
            "POST",
            "/v1/training-jobs",
            {"dataset_id": "ds_\u0000", "task": "diffusion", "model_name": "mine"},
            "dataset_id",
        ),
        (
            developer,
            "POST",
            "/v1/training-jobs",
            {
                "dataset_id": "ds_01JD0000000000000000000000",
                "task": "classification",
                "model_name": "mine",
                "config": {"target": "y\u0000"},
            },
            "config.target",
        ),
        (developer, "POST", "/v1/keys", {"name": "ci\u0000"}, "name"),
        (developer, "POST", "/v1/keys", {"name": "two\nlines"}, "name"),
        (admin, "POST", "/v1/admin/users", {"email": "a\u0000@example.com"}, "email"),
        (admin, "POST", "/v1/admin/users", {"email": "b@example.com", "name": "\u007f"}, "name"),
        (admin, "PATCH", f"/v1/admin/users/{developer.user_id}", {"name": "\u0000"}, "name"),
        (
            admin,
            "PATCH",
            f"/v1/admin/models/{catalog_model.name}",
            {"description": "a\u0000b"},
            "description",
        ),
        (
            admin,
            "POST",
            "/v1/admin/models",
            {
                "name": "new-model",
                "registered_model": "reg\u0000",
                "alias": "production",
                "pricing": {"unit": "image", "price_micros": 1},
            },
            "registered_model",
        ),
        (
            admin,
            "POST",
            f"/v1/admin/models/{catalog_model.name}/deploy",
            {"alias": "\u0000"},
            "alias",
        ),
    ]
    for account, method, path, body, field in refusals:
        response = _send(client, account, method, path, json=body)
        assert field in _refused_fields(response), (path, body)
    _no_nul_reached_the_database(statements)


def test_text_in_multipart_fields_refuses_control_characters(
    client: TestClient, developer: Account, statements: list[tuple[str, Any]]
) -> None:
    table = {"file": ("data.csv", b"x,y\n1,2\n", "text/csv")}
    for fields, field in [
        ({"name": "a\x00b"}, "name"),
        ({"name": "ok", "target": "y\x07"}, "target"),
    ]:
        response = client.post("/v1/datasets", data=fields, files=table, headers=developer.headers)
        assert field in _refused_fields(response)
    model = client.post(
        "/v1/models",
        data={"name": "my-model", "description": "\x00"},
        files={"file": ("model.onnx", b"not onnx", "application/octet-stream")},
        headers=developer.headers,
    )
    assert "description" in _refused_fields(model)
    created = client.post(
        "/v1/datasets", data={"name": "my table"}, files=table, headers=developer.headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "my table"
    _no_nul_reached_the_database(statements)


def test_query_parameters_refuse_nul(
    client: TestClient, developer: Account, admin: Account, statements: list[tuple[str, Any]]
) -> None:
    for account, path, field in [
        (developer, "/v1/jobs?model=%00", "model"),
        (admin, "/v1/admin/users?email=%00", "email"),
        (admin, "/v1/admin/keys?user_id=%00", "user_id"),
        (developer, "/v1/keys?cursor=%00", "cursor"),
    ]:
        assert field in _refused_fields(client.get(path, headers=account.headers))
    _no_nul_reached_the_database(statements)


def test_valid_text_still_works(
    client: TestClient,
    developer: Account,
    admin: Account,
    catalog_model: Model,
    text_model: Model,
) -> None:
    """Prompts and descriptions may hold tabs and line breaks; filters still filter."""
    job = client.post(
        "/v1/generate",
        json={"model": text_model.name, "input": {"prompt": "a cat\n\twearing a hat"}},
        headers=developer.headers,
    )
    assert job.status_code == 201, job.text
    assert job.json()["input"]["prompt"] == "a cat\n\twearing a hat"
    description = "line one\r\nline two\twith a tab"
    updated = client.patch(
        f"/v1/admin/models/{catalog_model.name}",
        json={"description": description},
        headers=admin.headers,
    )
    assert updated.status_code == 200 and updated.json()["description"] == description
    jobs = client.get(f"/v1/jobs?model={text_model.name}", headers=developer.headers).json()
    assert [listed["id"] for listed in jobs["data"]] == [job.json()["id"]]
    email = client.get(f"/v1/admin/users/{developer.user_id}", headers=admin.headers).json()[
        "email"
    ]
    users = client.get("/v1/admin/users", params={"email": email}, headers=admin.headers).json()
    assert [user["id"] for user in users["data"]] == [developer.user_id]
    keys = client.get(
        "/v1/admin/keys", params={"user_id": developer.user_id}, headers=admin.headers
    ).json()
    assert [key["id"] for key in keys["data"]] == [developer.key_id]


def test_openapi_publishes_the_patterns(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    def parameter(path: str, method: str, name: str) -> dict[str, Any]:
        found = [p for p in spec["paths"][path][method]["parameters"] if p["name"] == name]
        schema: dict[str, Any] = found[0]["schema"]
        return schema.get("anyOf", [schema])[0]

    assert parameter("/v1/jobs/{job_id}", "get", "job_id")["pattern"] == id_pattern("job")
    assert parameter("/v1/keys/{key_id}", "delete", "key_id")["pattern"] == id_pattern("key")
    predict = parameter("/v1/models/{name}/predict", "post", "name")
    assert predict["pattern"] == CATALOG_NAME_PATTERN
    assert parameter("/v1/admin/users", "get", "email")["pattern"] == ONE_LINE.pattern
    assert parameter("/v1/admin/keys", "get", "user_id")["pattern"] == id_pattern("usr")
    schemas = spec["components"]["schemas"]
    assert schemas["JobCreate"]["properties"]["model"]["pattern"] == CATALOG_NAME_PATTERN
    assert schemas["KeyCreate"]["properties"]["name"]["pattern"] == ONE_LINE.pattern
    description = schemas["ModelUpdate"]["properties"]["description"]["anyOf"][0]
    assert description["pattern"] == MULTILINE.pattern
    upload = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["properties"]["name"]["pattern"] == (
        ONE_LINE.pattern
    )


def test_one_line_and_multiline_text() -> None:
    one_line = TypeAdapter(Annotated[str, ONE_LINE])
    multiline = TypeAdapter(Annotated[str, MULTILINE])
    for character in ["\x00", "\x1b", "\x7f", "\x85", "\ud800"]:
        for kind in (one_line, multiline):
            with pytest.raises(ValidationError, match="control characters"):
                kind.validate_python(f"a{character}")
    for character in ["\t", "\n", "\r"]:
        with pytest.raises(ValidationError, match=f"U\\+{ord(character):04X} at character 1"):
            one_line.validate_python(f"a{character}")
        assert multiline.validate_python(f"a{character}") == f"a{character}"
    assert one_line.validate_python("naïve café — ok 🙂") == "naïve café — ok 🙂"
