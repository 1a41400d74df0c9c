"""Check Goshen's webhook deliveries: Standard Webhooks v1 (https://www.standardwebhooks.com).

from goshen.webhooks import WebhookVerificationError, verify
payload = verify("whsec_...", request_headers, raw_body)  # the JSON body, once its signature holds

Standard library only, so a receiver needs nothing else; the `standardwebhooks` package checks
the same signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["SECRET_PREFIX", "WebhookVerificationError", "sign", "signature_headers", "verify"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the public marker of a secret, not one
DEFAULT_TOLERANCE_SECONDS = 300
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class WebhookVerificationError(ValueError):
    """A delivery's headers, timestamp or signature, or the secret, do not check out; the
    message says which."""


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 HMAC-SHA256 of `{msg_id}.{timestamp}.{body}` keyed by the decoded secret."""
    return _v1_signature(_secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body)


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
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The delivery's JSON payload, once one of its v1 signatures matches; else raises
    WebhookVerificationError.

    `headers` is any mapping (a dict, httpx's or Starlette's headers), in any case;
    `webhook-signature` may hold several space-separated signatures (secret rotation). The
    timestamp must lie within `tolerance_seconds` of `now` either way, which refuses replays
    older than that; within it, a receiver that must act once keeps the `webhook-id`s it has
    handled and skips a repeat (the platform also retries a delivery with the same id).
    `body` is the raw bytes received: parsed and re-serialized JSON no longer matches.
    """
    key = _secret_key(secret)
    received = {name.lower(): value for name, value in headers.items()}
    missing = [name for name in HEADERS if not received.get(name)]
    if missing:
        raise WebhookVerificationError(f"missing header(s) {', '.join(missing)}")
    msg_id, stamp, signatures = (received[name] for name in HEADERS)
    _check_timestamp(stamp, tolerance_seconds, now)
    expected = _v1_signature(key, f"{msg_id}.{stamp}.".encode() + body)
    given = signatures.split()
    # Every entry is compared, matched or not, so the time taken says nothing about which.
    matches = [hmac.compare_digest(expected.encode(), entry.encode()) for entry in given]
    if not any(matches):
        raise WebhookVerificationError(
            f"none of the {len(given)} signature(s) in webhook-signature matches: verify the raw "
            "body bytes as received, with the secret of the account that made the job"
        )
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the body is signed but is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookVerificationError("the body is signed but is not a JSON object")
    return payload


def _check_timestamp(stamp: str, tolerance_seconds: float, now: datetime | None) -> None:
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise WebhookVerificationError(
            f"webhook-timestamp {stamp[:40]!r} is not Unix seconds (an integer)"
        )
    if now is not None and now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware, e.g. datetime.now(UTC)")
    age = (now or datetime.now(UTC)).timestamp() - int(stamp)
    if age > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {age:.0f} s old, over the {tolerance_seconds:g} s tolerance: "
            "a replayed delivery, or this machine's clock is behind"
        )
    if -age > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {-age:.0f} s in the future, over the {tolerance_seconds:g} s "
            "tolerance: this machine's clock is ahead, or the delivery was forged"
        )


def _v1_signature(key: bytes, content: bytes) -> str:
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def _secret_key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise WebhookVerificationError(
            "a webhook secret is `whsec_` followed by base64: copy it whole from "
            "GET /v1/webhooks/default/secret"
        ) from None
    if not key:
        raise WebhookVerificationError("the webhook secret is empty after `whsec_`")
    return key
