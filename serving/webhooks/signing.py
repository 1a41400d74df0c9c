"""Standard Webhooks v1 signing: per-user `whsec_` secrets, signatures, and their check.

Headers `webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
`id.timestamp.body`); `verify` is what a receiver runs (the README shows it; receivers without
this package use the `standardwebhooks` package, which checks the same signatures).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from goshen.db.models import User

SECRET_PREFIX = "whsec_"  # noqa: S105 - the public marker of a secret, not one
SECRET_BYTES = 32


class WebhookVerificationError(Exception):
    """A delivery's headers or signature do not check out; the message says which."""


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_secret_for(session: Session, user: User) -> str:
    """The user's signing secret, made and stored on first use.

    Concurrent first uses end with one secret: only an UPDATE that still sees NULL writes, and
    everyone re-reads what was stored.
    """
    if user.webhook_secret:
        return user.webhook_secret
    session.execute(
        update(User)
        .where(User.id == user.id, User.webhook_secret.is_(None))
        .values(webhook_secret=new_webhook_secret())
        .execution_options(synchronize_session=False)
    )
    stored = session.scalar(select(User.webhook_secret).where(User.id == user.id))
    assert stored is not None
    set_committed_value(user, "webhook_secret", stored)
    return stored


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 HMAC-SHA256 of `{msg_id}.{timestamp}.{body}` keyed by the decoded secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt of one message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = 300,
    now: datetime | None = None,
) -> None:
    """Check a received delivery; raise WebhookVerificationError unless one v1 signature matches.

    `headers` may use any case; `webhook-signature` may hold several space-separated signatures
    (secret rotation). The timestamp must be within `tolerance_seconds` of `now`.
    """
    received = {name.lower(): value for name, value in headers.items()}
    msg_id = received.get("webhook-id")
    stamp = received.get("webhook-timestamp")
    signatures = received.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not an integer") from None
    current = (now or datetime.now(UTC)).timestamp()
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (replay?)")
    expected = base64.b64decode(sign(secret, msg_id, timestamp, body).removeprefix("v1,"))
    if not any(hmac.compare_digest(expected, given) for given in _v1_signatures(signatures)):
        raise WebhookVerificationError("no webhook-signature matches the body")


def _secret_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from None


def _v1_signatures(header: str) -> list[bytes]:
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue  # a malformed entry is no match; another entry may still be
    return found
