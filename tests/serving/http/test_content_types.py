"""Routes that read JSON refuse other content types with a 415 naming what to send."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.accounts import Account

JSON_ROUTES = [
    ("POST", "/v1/generate", b'{"model": "digits-diffusion", "input": {"digit": 3}}'),
    ("POST", "/v1/keys", b'{"name": "ci"}'),
    ("POST", "/v1/admin/users", b'{"email": "a@example.com"}'),
    ("PATCH", "/v1/admin/models/digits-diffusion", b'{"description": "digits"}'),
    ("POST", "/v1/models/digits-classifier/predict", b'{"inputs": [[0.0]]}'),
]


@pytest.mark.parametrize(("method", "path", "body"), JSON_ROUTES)
@pytest.mark.parametrize("content_type", ["text/plain", None, "multipart/form-data; boundary=x"])
def test_a_json_route_answers_415_to_a_body_of_another_type(
    client: TestClient,
    admin: Account,
    method: str,
    path: str,
    body: bytes,
    content_type: str | None,
) -> None:
    headers = admin.headers | ({"Content-Type": content_type} if content_type else {})
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "Content-Type: application/json" in response.json()["detail"]


def test_json_with_a_charset_is_json_and_a_refused_body_changes_nothing(
    client: TestClient, developer: Account
) -> None:
    body = b'{"name": "ci"}'
    plain = developer.headers | {"Content-Type": "text/plain"}
    assert client.post("/v1/keys", content=body, headers=plain).status_code == 415
    listed = client.get("/v1/keys", headers=developer.headers).json()["data"]
    assert "ci" not in [key["name"] for key in listed]
    json_utf8 = developer.headers | {"Content-Type": "application/json; charset=utf-8"}
    assert client.post("/v1/keys", content=body, headers=json_utf8).status_code == 201


def test_a_missing_body_is_a_422_naming_it_not_a_415(
    client: TestClient, developer: Account
) -> None:
    response = client.post("/v1/generate", headers=developer.headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body"
