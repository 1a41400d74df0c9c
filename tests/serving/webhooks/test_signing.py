"""Webhook signatures and secrets: the Standard Webhooks test vector, what verify refuses, one
secret per user however sessions race, and the route that shows it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from goshen.db import session_scope
from goshen.db.models import User
from serving.webhooks.outbox import canonical_body
from serving.webhooks.signing import (
    WebhookVerificationError,
    new_webhook_secret,
    sign,
    signature_headers,
    verify,
    webhook_secret_for,
)
from tests.fixtures.accounts import Account
from tests.serving.webhooks.factories import PAYLOAD, Sessions, make_job, secret_of

# Signatures


def test_the_published_test_vector_reproduces() -> None:
    # From standard-webhooks/standard-webhooks: libraries/python/tests, test_sign_function.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    body = b'{"test": 2432232314}'

    signature = sign(secret, msg_id, 1614265330, body)

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": "1614265330",
        "webhook-signature": signature,
    }
    verify(secret, headers, body, now=datetime.fromtimestamp(1614265330 + 60, UTC))


def test_new_secrets_are_random_whsec_keys() -> None:
    made = {new_webhook_secret() for _ in range(20)}
    assert len(made) == 20
    for secret in made:
        assert secret.startswith("whsec_")
        assert len(secret) <= 64  # users.webhook_secret
        sign(secret, "msg_1", 1, b"{}")  # decodes as a key


def test_verify_accepts_what_sign_made_and_refuses_tampering() -> None:
    secret, body, now = new_webhook_secret(), canonical_body(PAYLOAD), datetime.now(UTC)
    headers = signature_headers(secret, "msg_abc", int(now.timestamp()), body)
    verify(secret, headers, body)
    verify(secret, {name.upper(): value for name, value in headers.items()}, body)
    rotated = {**headers, "webhook-signature": f"v1,bm90IGl0 v2,xx {headers['webhook-signature']}"}
    verify(secret, rotated, body)

    refused = {
        "tampered body": (secret, headers, body.replace(b"succeeded", b"failed"), now),
        "another secret": (new_webhook_secret(), headers, body, now),
        "another id": (secret, {**headers, "webhook-id": "msg_abd"}, body, now),
        "expired": (secret, headers, body, now + timedelta(seconds=301)),
        "from the future": (secret, headers, body, now - timedelta(seconds=301)),
        "no signature": (secret, {**headers, "webhook-signature": ""}, body, now),
        "only junk": (secret, {**headers, "webhook-signature": "v1,!!! v1a,abc"}, body, now),
        "bad timestamp": (secret, {**headers, "webhook-timestamp": "soon"}, body, now),
    }
    for case, (key, given, content, at) in refused.items():
        with pytest.raises(WebhookVerificationError):
            verify(key, given, content, now=at)
            pytest.fail(f"{case} was accepted")


# Secrets


def test_a_secret_is_made_once_even_when_two_sessions_race(sessions: Sessions) -> None:
    job = make_job(sessions, webhook=None)
    with session_scope(sessions) as late:
        stale = late.get_one(User, job.user_id)  # read before the secret exists
    assert stale.webhook_secret is None

    first = secret_of(sessions, job)
    with session_scope(sessions) as late:
        late.add(stale)
        assert webhook_secret_for(late, stale) == first
    assert secret_of(sessions, job) == first


def test_the_secret_route_needs_the_generate_scope_and_is_stable(
    client: TestClient, developer: Account, make_account: Callable[..., Account], sessions: Sessions
) -> None:
    assert client.get("/v1/webhooks/default/secret").status_code == 401
    limited = make_account(scopes=["jobs"])
    forbidden = client.get("/v1/webhooks/default/secret", headers=limited.headers)
    assert forbidden.status_code == 403 and "'generate' scope" in forbidden.json()["detail"]

    first = client.get("/v1/webhooks/default/secret", headers=developer.headers)
    second = client.get("/v1/webhooks/default/secret", headers=developer.headers)
    assert first.status_code == 200 and first.json() == second.json()
    assert first.json()["key"].startswith("whsec_")
    with sessions() as session:
        assert session.get_one(User, developer.user_id).webhook_secret == first.json()["key"]
    other = client.get("/v1/webhooks/default/secret", headers=make_account().headers)
    assert other.json()["key"] != first.json()["key"]
