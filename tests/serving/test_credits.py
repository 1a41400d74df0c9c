"""Credit through the API: holds at submission (exactly as many as credit allows under 100
concurrent requests, on a real server), the 402 problem, cancel releasing, the ledger and balance
routes, admin grants and adjustments (Idempotency-Key), unmetered accounts."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import CreditBalance, CreditLedgerEntry, LedgerEntryKind, Model, Role, utcnow
from tests.fixtures.accounts import Account, create_account

PRICE = 1000  # catalog_model: 1,000 micro-credits per image


def _job(model: Model, images: int = 1) -> dict[str, object]:
    return {"model": model.name, "input": {"digit": 4, "num_images": images}}


def _sums(sessions: sessionmaker[Session], user_id: str) -> tuple[int, int, int]:
    """(balance, held, holds written) from the ledger itself, checked against the cache."""
    entry = CreditLedgerEntry
    with sessions() as session:
        total, held = session.execute(
            select(func.sum(entry.amount_micros), func.sum(entry.held_micros)).where(
                entry.user_id == user_id
            )
        ).one()
        holds = session.scalar(
            select(func.count()).where(entry.user_id == user_id, entry.kind == "hold")
        )
        cached = session.get_one(CreditBalance, user_id)
    assert (cached.balance_micros, cached.held_micros) == (total, held)
    return total, held, holds or 0


def test_100_concurrent_submissions_against_credit_for_10_accept_exactly_10(
    live_api: Settings, sessions: sessionmaker[Session], catalog_model: Model
) -> None:
    account = create_account(sessions, credits_micros=10 * PRICE)

    def submit(_: int) -> httpx.Response:
        return httpx.post(
            f"{live_api.api_url}/v1/generate",
            json=_job(catalog_model),
            headers=account.headers,
            timeout=120,
        )

    with ThreadPoolExecutor(max_workers=100) as pool:
        responses = list(pool.map(submit, range(100)))
    assert Counter(response.status_code for response in responses) == {201: 10, 402: 90}
    refused = next(response for response in responses if response.status_code == 402)
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["type"] == "/problems/insufficient-credit" and body["status"] == 402
    assert (body["balance"], body["available"], body["required"]) == (10 * PRICE, 0, PRICE)
    assert _sums(sessions, account.user_id) == (10 * PRICE, 10 * PRICE, 10)


def test_a_refusal_queues_nothing_and_a_cancel_releases_the_hold(
    client: TestClient, sessions: sessionmaker[Session], catalog_model: Model
) -> None:
    account = create_account(sessions, credits_micros=3 * PRICE)
    refused = client.post("/v1/generate", json=_job(catalog_model, 4), headers=account.headers)
    assert refused.status_code == 402 and refused.json()["required"] == 4 * PRICE
    assert "0.004 credits" in refused.json()["detail"]
    job = client.post("/v1/generate", json=_job(catalog_model, 3), headers=account.headers)
    assert job.status_code == 201
    balance = client.get("/v1/credits/balance", headers=account.headers).json()
    assert balance == {
        "balance_micros": 3 * PRICE,
        "held_micros": 3 * PRICE,
        "available_micros": 0,
        "unmetered": False,
    }
    canceled = client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=account.headers)
    assert canceled.status_code == 200
    assert _sums(sessions, account.user_id) == (3 * PRICE, 0, 1)
    page = client.get("/v1/credits", params={"limit": 2}, headers=account.headers).json()
    assert [entry["kind"] for entry in page["data"]] == ["release", "hold"]
    assert page["data"][0]["held_micros"] == -3 * PRICE and page["has_more"]
    rest = client.get(
        "/v1/credits", params={"cursor": page["next_cursor"]}, headers=account.headers
    ).json()
    assert [entry["kind"] for entry in rest["data"]] == ["grant"] and not rest["has_more"]


def test_the_402s_are_documented_with_their_own_schemas(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    answer = document["paths"]["/v1/generate"]["post"]["responses"]["402"]
    schema = answer["content"]["application/problem+json"]["schema"]
    assert schema == {
        "oneOf": [
            {"$ref": "#/components/schemas/InsufficientCreditProblem"},
            {"$ref": "#/components/schemas/SpendCapProblem"},
        ]
    }
    schemas = document["components"]["schemas"]
    members = schemas["InsufficientCreditProblem"]["properties"]
    assert {"balance", "available", "required", "type", "detail"} <= set(members)
    assert {"cap", "spent", "held", "required"} <= set(schemas["SpendCapProblem"]["properties"])


def test_admins_and_unmetered_accounts_are_metered_but_never_refused(
    client: TestClient,
    sessions: sessionmaker[Session],
    catalog_model: Model,
    admin: Account,
) -> None:
    broke_admin = create_account(sessions, credits_micros=0, role=Role.admin)
    assert (
        client.post("/v1/generate", json=_job(catalog_model), headers=broke_admin.headers)
    ).status_code == 201
    broke = create_account(sessions, credits_micros=0)
    assert (
        client.post("/v1/generate", json=_job(catalog_model), headers=broke.headers).status_code
        == 402
    )
    marked = client.patch(
        f"/v1/admin/users/{broke.user_id}", json={"unmetered": True}, headers=admin.headers
    )
    assert marked.status_code == 200 and marked.json()["unmetered"] is True
    assert (
        client.post("/v1/generate", json=_job(catalog_model), headers=broke.headers).status_code
        == 201
    )
    for account in (broke_admin, broke):
        assert _sums(sessions, account.user_id) == (0, PRICE, 1)  # held all the same


def test_an_admin_grant_with_an_idempotency_key_is_made_once(
    client: TestClient, sessions: sessionmaker[Session], admin: Account, developer: Account
) -> None:
    url = f"/v1/admin/users/{developer.user_id}/credits"
    expires = (utcnow() + timedelta(days=30)).isoformat()
    body = {"kind": "grant", "amount_micros": 5 * PRICE, "expires_at": expires, "reason": "promo"}
    key = {"Idempotency-Key": "grant-1"}
    first = client.post(url, json=body, headers=admin.headers | key)
    again = client.post(url, json=body, headers=admin.headers | key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["created_by"] == admin.user_id and first.json()["reason"] == "promo"
    other = client.post(url, json=body | {"amount_micros": 1}, headers=admin.headers | key)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    new_user_credits = 10_000_000
    assert _sums(sessions, developer.user_id) == (new_user_credits + 5 * PRICE, 0, 0)
    own = client.get("/v1/credits", headers=developer.headers).json()["data"]
    assert [(entry["kind"], entry["amount_micros"]) for entry in own] == [
        ("grant", 5 * PRICE),
        ("grant", new_user_credits),
    ]
    read = client.get(f"{url}/balance", headers=admin.headers).json()
    assert read["available_micros"] == new_user_credits + 5 * PRICE


def test_admin_adjustments_need_a_reason_and_keep_available_credit_at_zero_or_more(
    client: TestClient, admin: Account, developer: Account
) -> None:
    url = f"/v1/admin/users/{developer.user_id}/credits"
    refusals = [
        ({"kind": "adjustment", "amount_micros": -5}, 422),
        ({"kind": "adjustment", "amount_micros": 0, "reason": "x"}, 422),
        ({"kind": "grant", "amount_micros": -5}, 422),
        ({"kind": "grant", "amount_micros": 5, "expires_at": "2020-01-01T00:00:00Z"}, 422),
        ({"kind": "grant", "amount_micros": 5, "expires_at": "2999-01-01T00:00:00"}, 422),
        ({"kind": "grant", "amount_micros": 5, "expires_at": "2999-01-01T00:00:00Z"}, 422),
        ({"kind": "grant", "amount_micros": 5, "expires_at": "0001-01-01T00:00:00+14:00"}, 422),
        ({"kind": "grant", "amount_micros": 5, "expires_at": "9999-12-31T23:59:59-14:00"}, 422),
        ({"kind": "adjustment", "amount_micros": -(10**15), "reason": "too much"}, 409),
    ]
    for body, status in refusals:
        assert client.post(url, json=body, headers=admin.headers).status_code == status, body
    taken = client.post(
        url,
        json={"kind": "adjustment", "amount_micros": -PRICE, "reason": "refund reversed"},
        headers=admin.headers,
    )
    assert taken.status_code == 201 and taken.json()["kind"] == LedgerEntryKind.adjustment
    forbidden = client.post(
        url, json={"kind": "grant", "amount_micros": 5}, headers=developer.headers
    )
    assert forbidden.status_code == 403
    missing = client.get(
        "/v1/admin/users/usr_00000000000000000000000000/credits", headers=admin.headers
    )
    assert missing.status_code == 404


def test_new_users_made_by_admins_get_the_new_user_grant(
    client: TestClient, admin: Account
) -> None:
    made = client.post("/v1/admin/users", json={"email": "new@example.com"}, headers=admin.headers)
    assert made.status_code == 201 and made.json()["unmetered"] is False
    balance = client.get(
        f"/v1/admin/users/{made.json()['id']}/credits/balance", headers=admin.headers
    )
    assert balance.json()["balance_micros"] == 10_000_000
