"""/v1/keys: a user's own keys, shown once, revocable, invisible to other users."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from goshen.config import Settings
from tests.fixtures.accounts import Account

PROBLEM = "application/problem+json"


def test_developer_key_lifecycle(client: TestClient, admin: Account, developer: Account) -> None:
    created = client.post("/v1/keys", json={"name": "ci"}, headers=developer.headers)
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["key"]
    assert secret.startswith("gsk_") and body["last4"] == secret[-4:]
    assert "secret_hash" not in body
    assert "admin" not in body["scopes"]

    new_headers = {"Authorization": f"Bearer {secret}"}
    listed = client.get("/v1/keys", headers=new_headers).json()
    assert {k["id"] for k in listed["data"]} == {developer.key_id, body["id"]}
    assert all("key" not in k and "secret_hash" not in k for k in listed["data"])
    assert client.get(f"/v1/keys/{body['id']}", headers=developer.headers).json()["name"] == "ci"

    revoked = client.delete(f"/v1/keys/{body['id']}", headers=developer.headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    after = client.get("/v1/keys", headers=new_headers)
    assert after.status_code == 401
    assert after.headers["content-type"] == PROBLEM
    assert after.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/keys", headers=developer.headers).status_code == 200


def test_another_users_key_is_not_found(
    client: TestClient, developer: Account, make_account: Callable[..., Account]
) -> None:
    other = make_account()
    for method in ("GET", "DELETE"):
        response = client.request(method, f"/v1/keys/{other.key_id}", headers=developer.headers)
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM
    assert client.get("/v1/keys", headers=other.headers).status_code == 200


def test_missing_and_unknown_keys_get_401(client: TestClient, developer: Account) -> None:
    assert client.get("/v1/keys").status_code == 401
    forged = developer.key[:-4] + "zzzz"
    assert client.get("/v1/keys", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    # Keys are accepted only in the Authorization header.
    assert client.get("/v1/keys", params={"api_key": developer.key}).status_code == 401
    basic = {"Authorization": f"Basic {developer.key}"}
    assert client.get("/v1/keys", headers=basic).status_code == 401


def test_key_without_the_keys_scope_gets_403(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    limited = make_account(scopes=["generate"])
    response = client.get("/v1/keys", headers=limited.headers)
    assert response.status_code == 403
    assert "'keys' scope" in response.json()["detail"]


def test_a_key_cannot_grant_more_than_it_holds(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    limited = make_account(scopes=["keys"])
    response = client.post(
        "/v1/keys", json={"name": "x", "scopes": ["keys", "generate"]}, headers=limited.headers
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "scopes"


def test_bad_bodies_are_422_problems_naming_the_field(
    client: TestClient, developer: Account
) -> None:
    cases = [
        ({"name": "x", "owner": "usr_1"}, "owner"),
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "x", "scopes": "keys"}, "scopes"),
    ]
    for body, field in cases:
        response = client.post("/v1/keys", json=body, headers=developer.headers)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["status"] == 422 and problem["title"]
        assert field in [error["field"] for error in problem["errors"]], problem


def test_cursor_pagination(client: TestClient, developer: Account) -> None:
    for index in range(4):
        client.post("/v1/keys", json={"name": f"k{index}"}, headers=developer.headers)
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/keys", params=params, headers=developer.headers).json()
        seen += [k["id"] for k in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)
    too_many = client.get("/v1/keys", params={"limit": 1000}, headers=developer.headers)
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "limit"
    bad_cursor = client.get("/v1/keys", params={"cursor": "' OR 1=1"}, headers=developer.headers)
    assert bad_cursor.status_code == 422


def test_a_revocation_reaches_every_api_process(
    client: TestClient, settings: Settings, admin: Account, developer: Account
) -> None:
    """Two API apps on one database: a key cached by one is refused there as soon as the other
    revokes it (SQLite: the stamp file; PostgreSQL: NOTIFY), long before the cache's TTL."""
    from serving.app import create_app
    from serving.http.principal_cache import TTL_SECONDS

    with TestClient(create_app(settings)) as other:
        assert other.get("/v1/keys", headers=developer.headers).status_code == 200  # cached there
        revoked = client.delete(f"/v1/admin/keys/{developer.key_id}", headers=admin.headers)
        assert revoked.status_code == 200
        deadline = time.monotonic() + TTL_SECONDS / 10
        while other.get("/v1/keys", headers=developer.headers).status_code != 401:
            assert time.monotonic() < deadline, "the other process still takes a revoked key"
            time.sleep(0.02)
