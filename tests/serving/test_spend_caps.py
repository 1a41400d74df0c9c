"""Per-key monthly spend caps through the API: set at creation and by PATCH, a key past its cap
gets its own 402 while the account's other keys keep working, what a key spent counts captures
and what it holds, and a cap change reaches the key's next request."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.billing import ledger, spend_caps
from goshen.db import session_scope
from goshen.db.models import Model
from tests.fixtures.accounts import Account

PRICE = 1000  # catalog_model: 1,000 micro-credits per image


def _job(model: Model, images: int = 1) -> dict[str, object]:
    return {"model": model.name, "input": {"digit": 4, "num_images": images}}


def _capped_key(client: TestClient, owner: Account, cap: int | None) -> dict[str, str]:
    created = client.post(
        "/v1/keys",
        json={"name": "capped", "monthly_spend_cap_micros": cap},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["monthly_spend_cap_micros"] == cap
    return {"Authorization": f"Bearer {created.json()['key']}"}


def test_a_key_past_its_cap_gets_402_while_another_key_of_the_account_works(
    client: TestClient, developer: Account, catalog_model: Model
) -> None:
    capped = _capped_key(client, developer, cap=2 * PRICE)
    assert client.post("/v1/generate", json=_job(catalog_model, 2), headers=capped).is_success

    refused = client.post("/v1/generate", json=_job(catalog_model), headers=capped)
    assert refused.status_code == 402
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["type"] == "/problems/spend-cap-exceeded"
    assert (body["cap"], body["spent"], body["held"], body["required"]) == (
        2 * PRICE,
        0,
        2 * PRICE,
        PRICE,
    )
    assert "PATCH /v1/keys" in body["detail"]

    other = client.post("/v1/generate", json=_job(catalog_model), headers=developer.headers)
    assert other.status_code == 201, other.text


def test_a_cap_set_by_patch_applies_to_the_next_request_and_null_removes_it(
    client: TestClient, developer: Account, catalog_model: Model
) -> None:
    manager = _capped_key(client, developer, cap=None)  # an uncapped key manages the caps
    url = f"/v1/keys/{developer.key_id}"
    capped = client.patch(url, json={"monthly_spend_cap_micros": 0}, headers=manager)
    assert capped.status_code == 200, capped.text
    assert capped.json()["monthly_spend_cap_micros"] == 0
    refused = client.post("/v1/generate", json=_job(catalog_model), headers=developer.headers)
    assert refused.status_code == 402
    assert refused.json()["type"] == "/problems/spend-cap-exceeded"

    renamed = client.patch(url, json={"name": "renamed"}, headers=developer.headers).json()
    assert (renamed["name"], renamed["monthly_spend_cap_micros"]) == ("renamed", 0)
    lifted = client.patch(url, json={"monthly_spend_cap_micros": None}, headers=manager)
    assert lifted.json()["monthly_spend_cap_micros"] is None
    accepted = client.post("/v1/generate", json=_job(catalog_model), headers=developer.headers)
    assert accepted.status_code == 201, accepted.text


def test_a_capped_key_cannot_escape_its_cap(
    client: TestClient, developer: Account, catalog_model: Model
) -> None:
    """Neither by making a key without the cap nor by lifting its own: both are 403."""
    capped = _capped_key(client, developer, cap=PRICE)
    keys = client.get("/v1/keys", headers=capped).json()["data"]
    own_id = next(key["id"] for key in keys if key["name"] == "capped")
    made = client.post("/v1/keys", json={"name": "escape"}, headers=capped)
    assert made.status_code == 403, made.text
    assert "spend cap" in made.json()["detail"]
    for cap in (None, 10 * PRICE):
        lifted = client.patch(
            f"/v1/keys/{own_id}", json={"monthly_spend_cap_micros": cap}, headers=capped
        )
        assert lifted.status_code == 403, lifted.text
    assert client.get(f"/v1/keys/{own_id}", headers=capped).json()["monthly_spend_cap_micros"] == (
        PRICE
    )


def test_bad_patches_say_what_to_fix(
    client: TestClient, developer: Account, make_account: object
) -> None:
    url = f"/v1/keys/{developer.key_id}"
    for body, field in (
        ({}, None),
        ({"monthly_spend_cap_micros": -1}, "monthly_spend_cap_micros"),
        ({"monthly_spend_cap_micros": 1.5}, "monthly_spend_cap_micros"),
        ({"monthly_spend_cap_micros": "100"}, "monthly_spend_cap_micros"),
        ({"name": None}, None),
        ({"scopes": ["generate"]}, "scopes"),
    ):
        answer = client.patch(url, json=body, headers=developer.headers)
        assert answer.status_code == 422, (body, answer.text)
        if field is not None:
            assert any(error["field"] == field for error in answer.json()["errors"]), answer.text
    revoked = client.post("/v1/keys", json={"name": "gone"}, headers=developer.headers).json()
    client.delete(f"/v1/keys/{revoked['id']}", headers=developer.headers)
    conflict = client.patch(
        f"/v1/keys/{revoked['id']}", json={"name": "x"}, headers=developer.headers
    )
    assert conflict.status_code == 409


def test_another_users_key_cannot_be_patched(
    client: TestClient, developer: Account, admin: Account
) -> None:
    answer = client.patch(
        f"/v1/keys/{admin.key_id}", json={"name": "mine"}, headers=developer.headers
    )
    assert answer.status_code == 404


def test_a_keys_spend_counts_captures_this_month_and_everything_it_holds(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model
) -> None:
    """Captures add to the month's spend; releases give back what was held, not spent."""
    key = developer.key_id
    with session_scope(sessions) as session:
        for job, held in (("job_a", 5 * PRICE), ("job_b", 3 * PRICE)):
            ledger.hold(
                session,
                user_id=developer.user_id,
                source=f"test:{job}",
                amount_micros=held,
                refuse_short=True,
                api_key_id=key,
            )
    with session_scope(sessions) as session:
        assert spend_caps.spend(session, key) == spend_caps.KeySpend(0, 8 * PRICE)
        ledger.settle(session, user_id=developer.user_id, source="test:job_a", cost_micros=PRICE)
    with session_scope(sessions) as session:
        assert spend_caps.spend(session, key) == spend_caps.KeySpend(PRICE, 3 * PRICE)
        ledger.settle(session, user_id=developer.user_id, source="test:job_b", cost_micros=0)
        ledger.settle(session, user_id=developer.user_id, source="test:job_a", cost_micros=PRICE)
    with session_scope(sessions) as session:
        assert spend_caps.spend(session, key) == spend_caps.KeySpend(PRICE, 0)


def test_months_are_utc_calendar_months() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    assert spend_caps.month_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"
    east = timezone(timedelta(hours=3))
    assert spend_caps.month_of(datetime(2027, 1, 1, 1, 0, tzinfo=east).astimezone(UTC)) == (
        "2026-12"
    )
