"""/v1/admin: users and keys, for admins only."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from goshen.db.models import Role
from tests.fixtures.accounts import Account


def _admin_operations(client: TestClient) -> list[tuple[str, str]]:
    """Every admin route in the OpenAPI document, path parameters filled with made-up ids."""
    operations = []
    for path, methods in client.app.openapi()["paths"].items():
        if path.startswith("/v1/admin"):
            concrete = re.sub(r"\{[^}]+\}", "x_01M8198BD1ZY9E3Q139G1Q5KPM", path)
            operations += [(method.upper(), concrete) for method in methods]
    return operations


def test_every_admin_route_refuses_non_admins(
    client: TestClient, developer: Account, make_account: Callable[..., Account]
) -> None:
    admin_without_scope = make_account(Role.admin, scopes=["keys"])
    operations = _admin_operations(client)
    assert len(operations) >= 7
    for account in (developer, admin_without_scope):
        for method, path in operations:
            response = client.request(method, path, headers=account.headers, json={})
            assert response.status_code == 403, (method, path)
    for method, path in operations:
        assert client.request(method, path, json={}).status_code == 401


def test_admin_creates_a_developer_and_revokes_its_key(client: TestClient, admin: Account) -> None:
    user = client.post(
        "/v1/admin/users", json={"email": "Dev@Example.com", "name": "Dev"}, headers=admin.headers
    )
    assert user.status_code == 201, user.text
    user_id = user.json()["id"]
    assert user.json()["role"] == "developer" and user.json()["email"] == "dev@example.com"

    duplicate = client.post(
        "/v1/admin/users", json={"email": "dev@example.com"}, headers=admin.headers
    )
    assert duplicate.status_code == 409

    key = client.post(
        f"/v1/admin/users/{user_id}/keys", json={"name": "first"}, headers=admin.headers
    )
    assert key.status_code == 201
    developer_headers = {"Authorization": f"Bearer {key.json()['key']}"}
    assert client.get("/v1/keys", headers=developer_headers).status_code == 200

    listed = client.get("/v1/admin/keys", params={"user_id": user_id}, headers=admin.headers).json()
    assert [k["id"] for k in listed["data"]] == [key.json()["id"]]

    assert (
        client.delete(f"/v1/admin/keys/{key.json()['id']}", headers=admin.headers).status_code
        == 200
    )
    assert client.get("/v1/keys", headers=developer_headers).status_code == 401


def test_disabling_a_user_stops_its_keys_at_once(
    client: TestClient, admin: Account, developer: Account
) -> None:
    path = f"/v1/admin/users/{developer.user_id}"
    assert client.patch(path, json={"disabled": True}, headers=admin.headers).json()["disabled_at"]
    assert client.get("/v1/keys", headers=developer.headers).status_code == 401
    assert client.patch(path, json={"disabled": False}, headers=admin.headers).status_code == 200
    assert client.get("/v1/keys", headers=developer.headers).status_code == 200


def test_admin_cannot_lock_themselves_out(client: TestClient, admin: Account) -> None:
    path = f"/v1/admin/users/{admin.user_id}"
    assert client.patch(path, json={"disabled": True}, headers=admin.headers).status_code == 409
    assert client.patch(path, json={"role": "developer"}, headers=admin.headers).status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "x@example.com", "role": "root"}, "role"),
        ({"email": "x@example.com", "id": "usr_1"}, "id"),
        ({"email": "not-an-email"}, "email"),
    ],
)
def test_create_user_validation(
    client: TestClient, admin: Account, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/admin/users", json=body, headers=admin.headers)
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


def test_unknown_user_is_404(client: TestClient, admin: Account) -> None:
    assert client.get("/v1/admin/users/usr_missing", headers=admin.headers).status_code == 404
    response = client.post(
        "/v1/admin/users/usr_missing/keys", json={"name": "k"}, headers=admin.headers
    )
    assert response.status_code == 404
