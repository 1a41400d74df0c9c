"""Webhook delivery: signed attempts over the exact bytes, failures, retries and giving up, claims
that come back after a crash, DNS rebinding and TLS, and the dispatcher (`goshen webhooks`).

Receivers are real HTTP servers on loopback addresses; databases are the real fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from goshen.config import Settings
from goshen.db.models import DeliveryStatus
from goshen.storage import make_store
from serving.webhooks import delivery as dispatch
from serving.webhooks.attempt import AttemptResult, ClaimedDelivery
from serving.webhooks.claims import (
    MAX_ATTEMPTS,
    RETRY_DELAYS_SECONDS,
    claim_due,
    record_attempt,
    retry_delay,
)
from serving.webhooks.delivery import deliver_due, run_dispatcher
from serving.webhooks.outbox import canonical_body
from serving.webhooks.signing import verify
from serving.webhooks.url_guard import check_webhook_url
from tests.serving.webhooks.factories import (
    PAYLOAD,
    Sessions,
    delivery_of,
    fake_dns,
    make_job,
    queue_event,
    secret_of,
    with_settings,
)
from tests.serving.webhooks.receivers import Receiver, status, tls_receiver_context

# Delivery


def test_a_delivery_is_signed_over_the_exact_bytes_and_its_id_survives_a_retry(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    job = make_job(sessions, webhook=receiver.url)
    queue_event(sessions, job)
    receiver.answers.append(status(500))
    first_try = datetime.now(UTC)

    assert deliver_due(sessions, hook_settings, now=first_try) == 1
    failed = delivery_of(sessions, job)
    assert failed.status == DeliveryStatus.pending and failed.attempt == 1
    assert failed.status_code == 500 and failed.last_error == "HTTP 500"
    wait = (failed.next_attempt_at - first_try).total_seconds()
    assert 4.5 - 0.1 <= wait <= 5.5 + 1
    assert deliver_due(sessions, hook_settings, now=first_try + timedelta(seconds=1)) == 0

    retry = first_try + timedelta(seconds=7)
    assert deliver_due(sessions, hook_settings, now=retry) == 1
    delivered = delivery_of(sessions, job)
    assert delivered.status == DeliveryStatus.delivered and delivered.status_code == 204
    assert delivered.attempt == 2 and delivered.delivered_at is not None

    secret = secret_of(sessions, job)
    first, second = receiver.received
    for received, at in ((first, first_try), (second, retry)):
        verify(secret, received.headers, received.body, now=at)
        assert received.body == canonical_body(PAYLOAD)
        assert json.loads(received.body) == PAYLOAD
        assert received.headers["Content-Type"] == "application/json"
        assert received.headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivered.event_id
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 7


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    job = make_job(sessions, webhook=receiver.url)
    queue_event(sessions, job)
    receiver.answers.append(status(302, Location=receiver.url + "/moved"))

    deliver_due(sessions, hook_settings)

    assert len(receiver.received) == 1
    delivery = delivery_of(sessions, job)
    assert delivery.status == DeliveryStatus.pending and delivery.status_code == 302
    assert "redirect" in (delivery.last_error or "") and "not followed" in delivery.last_error


def test_gone_stops_the_retries(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    job = make_job(sessions, webhook=receiver.url)
    queue_event(sessions, job)
    receiver.answers.append(status(410))
    deliver_due(sessions, hook_settings)
    assert delivery_of(sessions, job).status == DeliveryStatus.failed


def test_a_huge_response_is_not_read_past_the_bound(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    total, chunk = 512 * 1024**2, b"x" * 65536
    written = [0]
    finished = threading.Event()

    def huge(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        try:
            while written[0] < total:
                handler.wfile.write(chunk)
                written[0] += len(chunk)
        except OSError:
            pass  # the dispatcher hung up, as it should
        finally:
            finished.set()

    receiver.answers.append(huge)
    job = make_job(sessions, webhook=receiver.url)
    queue_event(sessions, job)

    started = time.monotonic()
    deliver_due(sessions, hook_settings)

    assert time.monotonic() - started < 5
    assert delivery_of(sessions, job).status == DeliveryStatus.delivered
    assert finished.wait(10)
    assert written[0] < 64 * 1024**2  # socket buffers hold a few MiB; the rest was never read


def test_a_slow_receiver_hits_the_timeout(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(2.5)
        with contextlib.suppress(OSError):  # the dispatcher gave up long ago
            status(200)(handler)

    receiver.answers.append(slow)
    job = make_job(sessions, webhook=receiver.url)
    queue_event(sessions, job)

    started = time.monotonic()
    deliver_due(sessions, hook_settings)

    assert time.monotonic() - started < 2.2  # the 1 s timeout, not the 2.5 s answer
    stored = delivery_of(sessions, job)
    assert stored.status == DeliveryStatus.pending and stored.status_code is None
    assert "GOSHEN_WEBHOOK_TIMEOUT_SECONDS" in (stored.last_error or "")


def test_the_retry_schedule_backs_off_for_hours() -> None:
    expected = [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert list(RETRY_DELAYS_SECONDS) == expected and MAX_ATTEMPTS == 8
    for attempt, seconds in enumerate(expected, start=1):
        delays = {retry_delay(attempt) for _ in range(50)}
        assert all(d is not None and 0.9 * seconds <= d <= 1.1 * seconds for d in delays)
        assert len(delays) > 1  # jittered
    assert retry_delay(MAX_ATTEMPTS) is None


def test_the_retry_base_scales_the_whole_schedule() -> None:
    """GOSHEN_WEBHOOK_RETRY_BASE_SECONDS=0.05: 0.05 s, 3 s, 18 s, ... (the chaos suite's)."""
    for attempt, seconds in enumerate(RETRY_DELAYS_SECONDS, start=1):
        delay = retry_delay(attempt, base_seconds=0.05)
        assert delay is not None and 0.9 * seconds / 100 <= delay <= 1.1 * seconds / 100
    assert retry_delay(MAX_ATTEMPTS, base_seconds=0.05) is None


def test_a_receiver_that_always_fails_is_given_up_after_the_schedule(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.default = status(503)
    job = make_job(sessions, webhook=receiver.url)
    queue_event(sessions, job)

    at, waits = datetime.now(UTC), []
    for _ in range(MAX_ATTEMPTS):
        assert deliver_due(sessions, hook_settings, now=at) == 1
        delivery = delivery_of(sessions, job)
        waits.append((delivery.next_attempt_at - at).total_seconds())
        at = delivery.next_attempt_at

    assert delivery.status == DeliveryStatus.failed and delivery.attempt == MAX_ATTEMPTS
    assert delivery.status_code == 503
    assert deliver_due(sessions, hook_settings, now=at + timedelta(days=30)) == 0
    assert len(receiver.received) == MAX_ATTEMPTS
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    for wait, planned in zip(waits[:-1], RETRY_DELAYS_SECONDS, strict=True):
        assert 0.9 * planned <= wait <= 1.1 * planned + 2


def test_a_crashed_dispatchers_claim_comes_back_and_its_late_result_is_ignored(
    sessions: Sessions, hook_settings: Settings
) -> None:
    job = make_job(sessions, webhook="https://hooks.example.com/x")
    queue_event(sessions, job)
    now, lease = datetime.now(UTC), timedelta(seconds=40)
    store = make_store(hook_settings)

    def claim(at: datetime) -> list[ClaimedDelivery]:
        return claim_due(sessions, now=at, lease=lease, limit=10, store=store)

    (lost,) = claim(now)
    assert claim(now + timedelta(seconds=39)) == []
    (again,) = claim(now + timedelta(seconds=41))
    assert (lost.attempt, again.attempt) == (1, 2) and lost.event_id == again.event_id
    assert lost.body == again.body == canonical_body(PAYLOAD)

    record_attempt(sessions, lost, AttemptResult(200, None), at=now + timedelta(seconds=42))
    assert delivery_of(sessions, job).status == DeliveryStatus.pending
    record_attempt(sessions, again, AttemptResult(204, None), at=now + timedelta(seconds=43))
    assert delivery_of(sessions, job).status == DeliveryStatus.delivered
    assert isinstance(again, ClaimedDelivery)


# DNS rebinding: the address checked is the address connected to


def _two_receivers_on_one_port(make_receiver: Callable[..., Receiver]) -> tuple[Receiver, Receiver]:
    for _ in range(20):
        checked = make_receiver("127.0.0.2")
        try:
            return checked, make_receiver("127.0.0.1", checked.port)
        except OSError:
            continue  # that port is taken on 127.0.0.1; try another
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


def test_the_connection_goes_to_the_address_that_was_checked(
    sessions: Sessions,
    hook_settings: Settings,
    make_receiver: Callable[..., Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked, elsewhere = _two_receivers_on_one_port(make_receiver)
    lookups = fake_dns(monkeypatch, "rebind.test", ("127.0.0.2",), ("127.0.0.1",))
    job = make_job(sessions, webhook=f"http://rebind.test:{checked.port}/hook")
    queue_event(sessions, job)

    deliver_due(sessions, hook_settings)

    # One lookup, for the check; a second one (by the HTTP client) would have answered 127.0.0.1.
    assert lookups == ["127.0.0.2"]
    assert len(checked.received) == 1 and elsewhere.received == []
    assert checked.received[0].headers["Host"] == f"rebind.test:{checked.port}"
    assert delivery_of(sessions, job).status == DeliveryStatus.delivered


def test_a_name_that_rebinds_to_loopback_is_refused_at_delivery(
    sessions: Sessions,
    settings: Settings,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://rebind.test:{receiver.port}/hook"
    fake_dns(monkeypatch, "rebind.test", ("93.184.215.14",), ("127.0.0.1",))
    check_webhook_url(url, allow_loopback=False)  # at submission it was public
    job = make_job(sessions, webhook=url)
    queue_event(sessions, job)

    deliver_due(sessions, with_settings(settings, webhook_timeout_seconds=1.0))

    assert receiver.received == []
    # A permanent refusal: the delivery ends after this one attempt, saying why.
    stored = delivery_of(sessions, job)
    assert stored.status == DeliveryStatus.failed and stored.status_code is None
    assert stored.attempt == 1
    assert "127.0.0.1, a loopback address" in (stored.last_error or "")


@pytest.mark.parametrize(
    ("certified_name", "delivered"), [("hooks.test", True), ("other.test", False)]
)
def test_https_checks_the_urls_name_while_connecting_to_the_checked_address(
    sessions: Sessions,
    hook_settings: Settings,
    make_receiver: Callable[..., Receiver],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    certified_name: str,
    delivered: bool,
) -> None:
    import certifi

    ca, context = tls_receiver_context(tmp_path, certified_name)
    monkeypatch.setattr(certifi, "where", lambda: ca)  # httpx trusts the test CA alone
    receiver = make_receiver(tls=context)
    fake_dns(monkeypatch, "hooks.test", ("127.0.0.1",))
    job = make_job(sessions, webhook=f"https://hooks.test:{receiver.port}/hook")
    queue_event(sessions, job)

    deliver_due(sessions, hook_settings)

    delivery = delivery_of(sessions, job)
    # The certificate names hooks.test, not 127.0.0.1: it verifies only through sni_hostname.
    assert (delivery.status == DeliveryStatus.delivered) is delivered, delivery.last_error
    assert len(receiver.received) == int(delivered)
    if not delivered:
        assert "certificate" in (delivery.last_error or "").lower()


# The dispatcher


def test_the_dispatcher_delivers_soon_after_commit_and_stops(
    sessions: Sessions,
    hook_settings: Settings,
    receiver: Receiver,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On PostgreSQL the poll is far longer than the test waits: only NOTIFY can wake it.
    poll = 30.0 if backend == "postgresql" else 0.1
    monkeypatch.setattr(dispatch, "MAX_POLL_SECONDS", poll)
    dispatcher_settings = with_settings(hook_settings, queue_poll_seconds=poll)
    stop = threading.Event()
    dispatcher = threading.Thread(target=run_dispatcher, args=(dispatcher_settings, stop))
    dispatcher.start()
    try:
        time.sleep(1.0)  # let it reach its first wait
        job = make_job(sessions, webhook=receiver.url)
        queue_event(sessions, job)
        deadline = time.monotonic() + 10
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(receiver.received) == 1
    finally:
        stop.set()
        dispatcher.join(timeout=poll + 5)
    assert not dispatcher.is_alive()


def test_goshen_webhooks_delivers_and_stops_on_sigterm(
    sessions: Sessions, settings: Settings, receiver: Receiver
) -> None:
    env = {
        **os.environ,
        "GOSHEN_HOME": str(settings.home_dir),
        "GOSHEN_DATABASE_URL": settings.resolved_database_url,
        "GOSHEN_WEBHOOK_ALLOW_LOOPBACK": "true",
        "GOSHEN_QUEUE_POLL_SECONDS": "0.2",
    }
    job = make_job(sessions, webhook=receiver.url)
    queue_event(sessions, job)
    process = subprocess.Popen([sys.executable, "-m", "goshen_launcher.cli", "webhooks"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(receiver.received) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
    verify(secret_of(sessions, job), receiver.received[0].headers, receiver.received[0].body)
