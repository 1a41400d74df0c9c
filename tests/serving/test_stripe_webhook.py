"""Stripe top-ups through POST /v1/billing/stripe/webhook, on both backends, with events signed
here exactly as Stripe signs them: a paid Checkout Session grants once however often its events
arrive, anything not signed with the endpoint's secret (or signed too long ago) is a 400, and an
event that cannot be granted is answered 200 and logged rather than redelivered for days."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import stripe
from fastapi.testclient import TestClient

from goshen.config import Settings, SettingsError, load_settings
from serving.app import create_app
from tests.fixtures.accounts import Account

SECRET = "whsec_" + secrets.token_urlsafe(24)
URL = "/v1/billing/stripe/webhook"
NEW_USER = 10_000_000  # GOSHEN_NEW_USER_CREDITS' default, in micro-credits


@pytest.fixture
def configured(settings: Settings) -> Settings:
    """Settings with Stripe top-ups configured."""
    return Settings(**{**settings.model_dump(), "_env_file": None, "stripe_webhook_secret": SECRET})


@pytest.fixture
def client(configured: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(configured)) as test_client:
        yield test_client


def checkout_event(
    metadata: dict[str, str] | None,
    *,
    kind: str = "checkout.session.completed",
    payment_status: str = "paid",
    session_id: str | None = None,
) -> dict[str, Any]:
    """An event as Stripe sends it (the fields Goshen reads, and some it does not)."""
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2025-08-27.basil",
        "created": int(time.time()),
        "livemode": False,
        "type": kind,
        "data": {
            "object": {
                "id": session_id or f"cs_test_{secrets.token_hex(16)}",
                "object": "checkout.session",
                "mode": "payment",
                "status": "complete",
                "payment_status": payment_status,
                "amount_total": 2500,
                "currency": "usd",
                "metadata": metadata or {},
            }
        },
    }


def top_up(user_id: str, credits: str = "25", **fields: Any) -> dict[str, Any]:
    return checkout_event({"goshen_user_id": user_id, "goshen_credits": credits}, **fields)


def signature(payload: bytes, *, secret: str = SECRET, at: int | None = None) -> str:
    """Stripe's `Stripe-Signature`: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.payload">."""
    timestamp = int(time.time()) if at is None else at
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def test_events_are_signed_here_as_the_stripe_package_signs_them() -> None:
    payload = json.dumps(checkout_event(None)).encode()
    expected = stripe.WebhookSignature.generate_signature_header(payload.decode(), SECRET, 1700)
    assert signature(payload, at=1700) == expected


def deliver(client: TestClient, event: dict[str, Any], **signing: Any) -> httpx.Response:
    payload = json.dumps(event).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": signature(payload, **signing),
    }
    return client.post(URL, content=payload, headers=headers)


def balance(client: TestClient, account: Account) -> int:
    answer = client.get("/v1/credits/balance", headers=account.headers)
    assert answer.status_code == 200
    micros: int = answer.json()["balance_micros"]
    return micros


def grants(client: TestClient, account: Account) -> list[dict[str, Any]]:
    page = client.get("/v1/credits", params={"limit": 100}, headers=account.headers).json()
    return [entry for entry in page["data"] if entry["kind"] == "grant"]


def assert_refused(answer: httpx.Response, *words: str) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    for word in words:
        assert word in answer.json()["detail"]


def test_a_paid_checkout_grants_its_credits_once_however_often_it_arrives(
    client: TestClient, developer: Account
) -> None:
    event = top_up(developer.user_id, "12.5")
    first = deliver(client, event)
    assert first.status_code == 200, first.text
    assert first.json()["event_id"] == event["id"]
    assert first.json()["outcome"] == "granted"
    assert balance(client, developer) == NEW_USER + 12_500_000

    replayed = deliver(client, event)  # Stripe redelivers with a fresh timestamp
    assert replayed.status_code == 200
    assert replayed.json()["outcome"] == "already_granted"
    # The same session's other event (async payment) moves nothing either.
    session_id = event["data"]["object"]["id"]
    other = top_up(
        developer.user_id,
        "12.5",
        kind="checkout.session.async_payment_succeeded",
        session_id=session_id,
    )
    assert deliver(client, other).json()["outcome"] == "already_granted"
    assert balance(client, developer) == NEW_USER + 12_500_000
    stripe_grants = [entry for entry in grants(client, developer) if session_id in entry["reason"]]
    assert len(stripe_grants) == 1 and stripe_grants[0]["amount_micros"] == 12_500_000


def test_concurrent_deliveries_of_one_event_grant_once(
    configured: Settings, run_api: Callable[..., Any], developer: Account
) -> None:
    payload = json.dumps(top_up(developer.user_id, "3")).encode()
    headers = {"Stripe-Signature": signature(payload), "Content-Type": "application/json"}
    with run_api(configured) as served:

        def send(_: int) -> httpx.Response:
            return httpx.post(
                f"{served.api_url}{URL}", content=payload, headers=headers, timeout=60
            )

        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(send, range(10)))
        outcomes = Counter(answer.json()["outcome"] for answer in answers)
        assert outcomes == {"granted": 1, "already_granted": 9}
        account = httpx.get(f"{served.api_url}/v1/credits/balance", headers=developer.headers)
        assert account.json()["balance_micros"] == NEW_USER + 3_000_000


def test_a_delayed_payment_grants_when_it_succeeds_not_when_checkout_completes(
    client: TestClient, developer: Account
) -> None:
    pending = top_up(developer.user_id, "5", payment_status="unpaid")
    answer = deliver(client, pending)
    assert answer.status_code == 200 and answer.json()["outcome"] == "ignored"
    assert "not 'paid'" in answer.json()["detail"]
    assert balance(client, developer) == NEW_USER
    succeeded = top_up(
        developer.user_id,
        "5",
        kind="checkout.session.async_payment_succeeded",
        session_id=pending["data"]["object"]["id"],
    )
    assert deliver(client, succeeded).json()["outcome"] == "granted"
    assert balance(client, developer) == NEW_USER + 5_000_000


def test_a_signature_made_with_another_secret_is_400(
    client: TestClient, developer: Account
) -> None:
    answer = deliver(client, top_up(developer.user_id), secret="whsec_someone-else")
    assert_refused(answer, "Stripe-Signature check failed", "GOSHEN_STRIPE_WEBHOOK_SECRET")
    assert balance(client, developer) == NEW_USER


def test_a_body_changed_after_signing_is_400(client: TestClient, developer: Account) -> None:
    payload = json.dumps(top_up(developer.user_id, "1")).encode()
    headers = {"Stripe-Signature": signature(payload), "Content-Type": "application/json"}
    changed = payload.replace(b'"1"', b'"1000"')
    assert_refused(client.post(URL, content=changed, headers=headers), "check failed")
    assert balance(client, developer) == NEW_USER


def test_a_signature_older_than_five_minutes_is_400(client: TestClient, developer: Account) -> None:
    stale = deliver(client, top_up(developer.user_id), at=int(time.time()) - 301)
    assert_refused(stale, "tolerance")
    assert balance(client, developer) == NEW_USER
    recent = deliver(client, top_up(developer.user_id), at=int(time.time()) - 240)
    assert recent.json()["outcome"] == "granted"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Stripe-Signature": ""},
        {"Stripe-Signature": "v1=abc"},
        {"Stripe-Signature": "t=1,v0=abc"},
        {"Stripe-Signature": "t=" + "9" * 5000 + ",v1=abc"},
        {"Stripe-Signature": "t=1,v1=\u00e9".encode("latin-1")},
    ],
    ids=["missing", "empty", "no-timestamp", "no-v1", "huge-timestamp", "not-ascii"],
)
def test_a_missing_or_malformed_signature_header_is_400(
    client: TestClient, developer: Account, headers: dict[str, Any]
) -> None:
    payload = json.dumps(top_up(developer.user_id)).encode()
    answer = client.post(URL, content=payload, headers=headers)
    assert_refused(answer, "Stripe-Signature")
    assert balance(client, developer) == NEW_USER


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe not utf-8", b"not json", b"[1, 2]", b'{"type": "x"}', b"[" * 10_000],
    ids=["not-utf8", "not-json", "not-an-object", "no-id", "deep"],
)
def test_a_signed_body_that_is_no_stripe_event_is_400(client: TestClient, payload: bytes) -> None:
    headers = {"Stripe-Signature": signature(payload)}
    answer = client.post(URL, content=payload, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"


def test_unconfigured_top_ups_answer_404_even_to_a_signed_event(
    settings: Settings, developer: Account
) -> None:
    assert settings.stripe_webhook_secret is None
    with TestClient(create_app(settings)) as unconfigured:
        answer = deliver(unconfigured, top_up(developer.user_id))
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
        assert "GOSHEN_STRIPE_WEBHOOK_SECRET" in answer.json()["detail"]
        assert balance(unconfigured, developer) == NEW_USER


@pytest.mark.parametrize(
    "kind", ["invoice.paid", "checkout.session.expired", "payment_intent.succeeded"]
)
def test_other_event_types_are_ignored_with_200(
    client: TestClient, developer: Account, kind: str
) -> None:
    answer = deliver(client, top_up(developer.user_id, kind=kind))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "ignored"
    assert balance(client, developer) == NEW_USER


def test_a_checkout_that_is_not_a_goshen_top_up_is_ignored(client: TestClient) -> None:
    answer = deliver(client, checkout_event({"order": "t-shirt"}))
    assert answer.status_code == 200 and answer.json()["outcome"] == "ignored"
    assert "not a Goshen top-up" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("metadata", "named"),
    [
        ({"goshen_credits": "25"}, "goshen_user_id"),
        ({"goshen_user_id": "bob@example.com", "goshen_credits": "25"}, "goshen_user_id"),
        ({"goshen_user_id": "usr_" + "0" * 26, "goshen_credits": "25"}, "no Goshen user"),
        ({"goshen_user_id": "{user}"}, "goshen_credits"),
        ({"goshen_user_id": "{user}", "goshen_credits": "abc"}, "goshen_credits"),
        ({"goshen_user_id": "{user}", "goshen_credits": "1.1234567"}, "goshen_credits"),
        ({"goshen_user_id": "{user}", "goshen_credits": "-5"}, "goshen_credits"),
        ({"goshen_user_id": "{user}", "goshen_credits": "0"}, "goshen_credits"),
        ({"goshen_user_id": "{user}", "goshen_credits": "1e3"}, "goshen_credits"),
        ({"goshen_user_id": "{user}", "goshen_credits": "NaN"}, "goshen_credits"),
        ({"goshen_user_id": "{user}", "goshen_credits": "2000000000"}, "goshen_credits"),
    ],
)
def test_a_paid_checkout_with_bad_metadata_grants_nothing_and_is_logged(
    client: TestClient,
    developer: Account,
    caplog: pytest.LogCaptureFixture,
    metadata: dict[str, str],
    named: str,
) -> None:
    metadata = {
        name: value.replace("{user}", developer.user_id) for name, value in metadata.items()
    }
    event = checkout_event(metadata)
    with caplog.at_level(logging.ERROR, logger="goshen.billing.topups"):
        answer = deliver(client, event)
    # 200: the event will never say anything else, and a redelivery would change nothing.
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "rejected"
    assert named in answer.json()["detail"]
    assert balance(client, developer) == NEW_USER
    assert any(event["id"] in record.getMessage() for record in caplog.records)


def test_the_route_is_documented_without_an_api_key(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][URL]["post"]
    assert "security" not in operation
    assert {"200", "400", "404"} <= set(operation["responses"])
    assert not {"401", "403"} & set(operation["responses"])
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Stripe-Signature" and header["required"]


def test_the_secret_must_be_a_stripe_signing_secret() -> None:
    with pytest.raises(SettingsError, match=r"GOSHEN_STRIPE_WEBHOOK_SECRET.*whsec_"):
        load_settings(_env_file=None, stripe_webhook_secret="sk_live_123")
    assert load_settings(_env_file=None, stripe_webhook_secret="").stripe_webhook_secret is None
    assert SECRET not in repr(load_settings(_env_file=None, stripe_webhook_secret=SECRET))
