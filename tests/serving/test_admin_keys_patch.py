"""PATCH /v1/admin/keys/{id}: an admin renames any user's key or sets and removes its monthly
spend cap; revoked keys cannot change; and a key an admin issues with a cap keeps it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from goshen.db.models import Model
from goshen.ids import new_id
from tests.fixtures.accounts import Account


def _listed(client: TestClient, admin: Account, owner: Account) -> dict[str, object]:
    """The owner's key as the admin key listing shows it."""
    keys = client.get("/v1/admin/keys", params={"user_id": owner.user_id}, headers=admin.headers)
    return next(key for key in keys.json()["data"] if key["id"] == owner.key_id)


def test_an_admin_sets_and_removes_a_developers_cap(
    client: TestClient, admin: Account, developer: Account, catalog_model: Model
) -> None:
    url = f"/v1/admin/keys/{developer.key_id}"
    capped = client.patch(url, json={"monthly_spend_cap_micros": 0}, headers=admin.headers)
    assert capped.status_code == 200, capped.text
    assert capped.json()["monthly_spend_cap_micros"] == 0
    job = {"model": catalog_model.name, "input": {"digit": 4, "num_images": 1}}
    refused = client.post("/v1/generate", json=job, headers=developer.headers)
    assert refused.status_code == 402
    assert refused.json()["type"] == "/problems/spend-cap-exceeded"

    renamed = client.patch(url, json={"name": "ci"}, headers=admin.headers).json()
    assert (renamed["name"], renamed["monthly_spend_cap_micros"]) == ("ci", 0)
    lifted = client.patch(url, json={"monthly_spend_cap_micros": None}, headers=admin.headers)
    assert lifted.json()["monthly_spend_cap_micros"] is None
    assert _listed(client, admin, developer)["monthly_spend_cap_micros"] is None
    accepted = client.post("/v1/generate", json=job, headers=developer.headers)
    assert accepted.status_code == 201, accepted.text


def test_a_revoked_key_cannot_change(
    client: TestClient, admin: Account, developer: Account
) -> None:
    url = f"/v1/admin/keys/{developer.key_id}"
    assert client.delete(url, headers=admin.headers).status_code == 200

    answer = client.patch(url, json={"monthly_spend_cap_micros": 1}, headers=admin.headers)

    assert answer.status_code == 409
    assert "revoked" in answer.json()["detail"]
    assert _listed(client, admin, developer)["monthly_spend_cap_micros"] is None


def test_only_admins_patch_and_an_unknown_or_empty_patch_is_refused(
    client: TestClient, admin: Account, developer: Account
) -> None:
    cap = {"monthly_spend_cap_micros": 5}
    for key_id in (admin.key_id, developer.key_id):
        answer = client.patch(f"/v1/admin/keys/{key_id}", json=cap, headers=developer.headers)
        assert answer.status_code == 403
    unknown = client.patch(f"/v1/admin/keys/{new_id('key')}", json=cap, headers=admin.headers)
    assert unknown.status_code == 404
    empty = client.patch(f"/v1/admin/keys/{developer.key_id}", json={}, headers=admin.headers)
    assert empty.status_code == 422
    assert _listed(client, admin, developer)["monthly_spend_cap_micros"] is None


def test_a_key_an_admin_issues_with_a_cap_keeps_it(
    client: TestClient, admin: Account, developer: Account, catalog_model: Model
) -> None:
    issued = client.post(
        f"/v1/admin/users/{developer.user_id}/keys",
        json={"name": "capped", "monthly_spend_cap_micros": 0},
        headers=admin.headers,
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["monthly_spend_cap_micros"] == 0
    own = client.get("/v1/keys", headers=developer.headers).json()["data"]
    assert {key["name"]: key["monthly_spend_cap_micros"] for key in own} == {
        "test": None,
        "capped": 0,
    }
    capped = {"Authorization": f"Bearer {issued.json()['key']}"}
    job = {"model": catalog_model.name, "input": {"digit": 4, "num_images": 1}}
    assert client.post("/v1/generate", json=job, headers=capped).status_code == 402
