"""The SDK's webhook check (goshen.webhooks): the Standard Webhooks test vector, agreement with the
`standardwebhooks` package both ways, replay tolerance, and what it refuses, with messages that
say why. A real delivery from the platform: tests/serving/webhooks/test_sdk_verification.py."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import standardwebhooks
from starlette.datastructures import Headers

from goshen.webhooks import WebhookVerificationError, sign, signature_headers, verify

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = {"type": "job.completed", "data": {"id": "job_x", "status": "succeeded"}, "note": "ü"}
BODY = json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).encode()
NOW = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed(secret: str, at: datetime = NOW, body: bytes = BODY) -> dict[str, str]:
    return signature_headers(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", int(at.timestamp()), body)


def refusal(
    secret: str, headers: dict[str, str], body: bytes = BODY, tolerance_seconds: float = 300
) -> str:
    with pytest.raises(WebhookVerificationError) as refused:
        verify(secret, headers, body, now=NOW, tolerance_seconds=tolerance_seconds)
    return str(refused.value)


def test_the_published_test_vector_reproduces() -> None:
    """From the spec's reference library: standard-webhooks/standard-webhooks,
    libraries/python/tests/test_webhooks.py, test_sign_function (commit b2fa7b8)."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    assert sign(secret, msg_id, timestamp, body) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    at = datetime.fromtimestamp(timestamp + 60, UTC)
    assert verify(secret, {**headers, "webhook-signature": expected}, body, now=at) == {
        "test": 2432232314
    }


def test_what_standardwebhooks_signs_verifies_here() -> None:
    secret, now = new_secret(), datetime.now(UTC)
    theirs = standardwebhooks.Webhook(secret).sign("msg_1", now, BODY.decode())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": theirs,
    }
    assert verify(secret, headers, BODY) == PAYLOAD
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers, BODY)


def test_what_we_sign_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    headers = signed(secret, datetime.now(UTC))
    assert standardwebhooks.Webhook(secret).verify(BODY, headers) == PAYLOAD
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(BODY, headers)


def test_headers_are_read_in_any_case_from_any_mapping() -> None:
    secret = new_secret()
    headers = signed(secret)
    shouted = {name.upper(): value for name, value in headers.items()}
    titled = {name.title(): value for name, value in headers.items()}
    raw = [(name.title().encode(), value.encode()) for name, value in headers.items()]
    for given in (shouted, titled, httpx.Headers(titled), Headers(raw=raw)):
        assert verify(secret, given, BODY, now=NOW) == PAYLOAD


def test_the_timestamp_must_be_within_the_tolerance_either_way() -> None:
    secret = new_secret()
    for age in (-300, 0, 300):
        assert verify(secret, signed(secret, NOW - timedelta(seconds=age)), BODY, now=NOW)

    too_old = refusal(secret, signed(secret, NOW - timedelta(seconds=301)))
    assert "301 s old" in too_old and "300 s tolerance" in too_old and "replay" in too_old
    too_new = refusal(secret, signed(secret, NOW + timedelta(seconds=301)))
    assert "301 s in the future" in too_new

    ten_seconds_old = signed(secret, NOW - timedelta(seconds=11))
    assert "10 s tolerance" in refusal(secret, ten_seconds_old, tolerance_seconds=10)
    assert verify(secret, ten_seconds_old, BODY, now=NOW, tolerance_seconds=11) == PAYLOAD


@pytest.mark.parametrize("stamp", ["soon", "1764964800.5", "-1764964800", "1e9", "٣٣٣", "9" * 5000])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(stamp: str) -> None:
    secret = new_secret()
    message = refusal(secret, {**signed(secret), "webhook-timestamp": stamp})
    assert "webhook-timestamp" in message and "not Unix seconds" in message


def test_changed_content_or_another_secret_matches_no_signature() -> None:
    secret = new_secret()
    headers = signed(secret)
    later = str(int(NOW.timestamp()) + 1)
    changed = {
        "tampered body": (secret, headers, BODY.replace(b"succeeded", b"failed")),
        "re-serialized body": (secret, headers, json.dumps(PAYLOAD).encode()),
        "another secret": (new_secret(), headers, BODY),
        "another id": (secret, {**headers, "webhook-id": "msg_2"}, BODY),
        "another timestamp": (secret, {**headers, "webhook-timestamp": later}, BODY),
    }
    for case, (key, given, body) in changed.items():
        assert "none of the 1 signature(s)" in refusal(key, given, body), case


def test_one_matching_signature_among_several_is_enough() -> None:
    secret, old_secret = new_secret(), new_secret()
    valid = signed(secret)["webhook-signature"]
    stale = signed(old_secret)["webhook-signature"]
    others = f"v1,bm90IGl0 v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw== v2,xx {stale} junk"
    for signatures in (f"{others} {valid}", f"{valid} {others}", f"{stale}  {valid}"):
        headers = {**signed(secret), "webhook-signature": signatures}
        assert verify(secret, headers, BODY, now=NOW) == PAYLOAD

    only_others = {**signed(secret), "webhook-signature": others}
    assert "none of the 5 signature(s)" in refusal(secret, only_others)
    # The same signature without its version is not a v1 signature.
    unversioned = {**signed(secret), "webhook-signature": valid.removeprefix("v1,")}
    refusal(secret, unversioned)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_or_empty_header_is_named(header: str) -> None:
    secret = new_secret()
    headers = signed(secret)
    assert refusal(secret, {k: v for k, v in headers.items() if k != header}) == (
        f"missing header(s) {header}"
    )
    assert refusal(secret, {**headers, header: ""}) == f"missing header(s) {header}"
    assert "webhook-id, webhook-timestamp, webhook-signature" in refusal(secret, {})


@pytest.mark.parametrize(
    ("secret", "expected"),
    [("whsec_not base64!", "followed by base64"), ("whsec_", "empty after `whsec_`")],
)
def test_a_malformed_secret_is_refused_before_the_headers(secret: str, expected: str) -> None:
    assert expected in refusal(secret, signed(new_secret()))
    with pytest.raises(WebhookVerificationError, match=expected):
        sign(secret, "msg_1", 1, BODY)


def test_a_signed_body_that_is_not_a_json_object_is_refused() -> None:
    secret = new_secret()
    for body, expected in ((b"\xff not json", "is not JSON"), (b"[1, 2]", "not a JSON object")):
        assert expected in refusal(secret, signed(secret, body=body), body)


def test_a_naive_now_is_a_mistake_not_a_verdict() -> None:
    secret = new_secret()
    with pytest.raises(ValueError, match="timezone-aware") as raised:
        verify(secret, signed(secret), BODY, now=NOW.replace(tzinfo=None))
    assert not isinstance(raised.value, WebhookVerificationError)


def test_the_module_needs_only_the_standard_library() -> None:
    # -S: no site-packages at all, so any third-party import fails.
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import goshen.webhooks"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
