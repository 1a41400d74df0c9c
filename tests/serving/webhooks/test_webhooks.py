"""Job webhooks: Standard Webhooks signatures, the URL guard, the outbox and its delivery.

Receivers are real HTTP servers on loopback addresses; databases are the real fixtures.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import (
    DeliveryStatus,
    Job,
    Model,
    ModelKind,
    ModelRuntime,
    PricingUnit,
    User,
    WebhookDelivery,
)
from goshen.errors import InvalidInputError
from serving.webhooks.delivery import (
    MAX_ATTEMPTS,
    RETRY_DELAYS_SECONDS,
    AttemptResult,
    ClaimedDelivery,
    claim_due,
    deliver_due,
    record_attempt,
    retry_delay,
    run_dispatcher,
)
from serving.webhooks.outbox import WEBHOOK_EVENTS, canonical_body, enqueue_event
from serving.webhooks.signing import (
    WebhookVerificationError,
    new_webhook_secret,
    sign,
    signature_headers,
    verify,
    webhook_secret_for,
)
from serving.webhooks.url_guard import address_refusal, check_webhook_url

Sessions = sessionmaker[Session]
PAYLOAD = {"id": "job_x", "status": "succeeded", "output": {"images": ["a.png"]}, "note": "ü"}


# Factories and receivers


def make_job(sessions: Sessions, webhook: str | None, events: list[str] | None = None) -> Job:
    """A job of a fresh user on a fresh catalog model."""
    with session_scope(sessions) as session:
        user = User(email=f"{secrets.token_hex(4)}@example.com")
        model = Model(
            name=f"model-{secrets.token_hex(4)}",
            kind=ModelKind.onnx,
            runtime=ModelRuntime.onnx,
            registered_model="digits-classifier",
            pricing_unit=PricingUnit.request,
        )
        session.add_all([user, model])
        session.flush()
        job = Job(user_id=user.id, model_id=model.id, webhook=webhook, webhook_events=events or [])
        session.add(job)
    return job


def queue_event(sessions: Sessions, job: Job, event: str = "completed") -> bool:
    with session_scope(sessions) as session:
        return enqueue_event(session, job, event, PAYLOAD)


def delivery_of(sessions: Sessions, job: Job, event: str = "completed") -> WebhookDelivery:
    with sessions() as session:
        return session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.job_id == job.id, WebhookDelivery.event_type == event
            )
        ).one()


def secret_of(sessions: Sessions, job: Job) -> str:
    with session_scope(sessions) as session:
        return webhook_secret_for(session, session.get_one(User, job.user_id))


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


Answer = Callable[[BaseHTTPRequestHandler], None]


def status(code: int, **headers: str) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        for name, value in {"Content-Length": "0", **headers}.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()

    return answer


@dataclass
class Receiver:
    """An HTTP server on a loopback address: records each POST and answers as told (default 204)."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=lambda: status(204))

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.port}/hook"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        self.received.append(Received(dict(handler.headers.items()), body))
        (self.answers.pop(0) if self.answers else self.default)(handler)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.server.receiver.answer(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> Receiver:
        server = ThreadingHTTPServer((host, port), _Handler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        receiver = Receiver(server)
        server.receiver = receiver  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.fixture
def receiver(make_receiver: Callable[..., Receiver]) -> Receiver:
    return make_receiver()


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return Settings(**{**settings.model_dump(), **changes, "_env_file": None})


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Settings that let deliveries reach loopback receivers, with a short timeout."""
    return with_settings(settings, webhook_allow_loopback=True, webhook_timeout_seconds=1.0)


def fake_dns(monkeypatch: pytest.MonkeyPatch, name: str, *calls: tuple[str, ...]) -> list[str]:
    """Make `name` resolve to calls[k] at the k-th lookup (the last repeats); the lookups made."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != name:
            return real(host, port, *args, **kwargs)
        answer = calls[min(len(asked), len(calls) - 1)]
        asked.append(",".join(answer))
        return [info for address in answer for info in real(address, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


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


def test_the_body_is_canonical_json() -> None:
    assert canonical_body({"b": 1, "a": [1, 2], "c": "ü"}) == '{"a":[1,2],"b":1,"c":"ü"}'.encode()
    with pytest.raises(ValueError):
        canonical_body({"x": float("nan")})


# The URL guard

LOOPBACK_SPELLINGS = [
    "http://127.0.0.1/hook",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://0177.1/",
    "http://017700000001/",
    "http://127.0.0.1./",
    "http://127.255.255.254:9000/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]:8080/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://localhost/",
    "http://LOCALHOST./",
    "https://localhost:8443/hook",
]
ALWAYS_REFUSED = {
    "http://0.0.0.0/": "unspecified",
    "http://0/": "unspecified",
    "http://[::]/": "unspecified",
    "http://10.0.0.1/": "private",
    "http://012.1/": "private",
    "http://172.16.0.1/": "private",
    "http://192.168.1.1/": "private",
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://2852039166/": "link-local",
    "http://0xa9.0xfe.0xa9.0xfe/": "link-local",
    "http://100.64.0.1/": "CGNAT",
    "http://192.0.2.1/": "documentation",
    "http://198.51.100.7/": "documentation",
    "http://224.0.0.1/": "multicast",
    "http://255.255.255.255/": "reserved",
    "http://240.0.0.1/": "reserved",
    "http://[fe80::1]/": "link-local",
    "http://[fc00::1]/": "unique-local",
    "http://[fd12:3456:789a::1]/": "unique-local",
    "http://[fec0::1]/": "site-local",
    "http://[ff02::1]/": "multicast",
    "http://[2001:db8::1]/": "documentation",
    "http://[::ffff:10.0.0.1]/": "private",
    "http://[::ffff:a9fe:a9fe]/": "link-local",
    "http://[::127.0.0.1]/": "reserved",
    "http://[2002:a9fe:a9fe::1]/": "6to4",
    "http://[2002:7f00:1::1]/": "6to4",
    "http://[64:ff9b::a9fe:a9fe]/": "NAT64",
    "http://[64:ff9b::127.0.0.1]/": "NAT64",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/": "Teredo",
    "http://[fe80::1%25eth0]/": "zone",
}
PUBLIC = [
    "http://8.8.8.8/hook",
    "https://1.1.1.1:8443/x?y=1",
    "http://134744072/",
    "http://[2606:4700:4700::1111]/",
    "http://[::ffff:8.8.8.8]/",
    "http://[2002:808:808::1]/",
]
MALFORMED = {
    "ftp://8.8.8.8/": "http",
    "file:///etc/passwd": "http",
    "javascript:alert(1)": "http",
    "http:///nohost": "host",
    "http://user:pw@8.8.8.8/": "password",
    "http://8.8.8.8:99999/": "port",
    "http://1.2.3.4.5/": "IPv4",
    "http://08.0.0.1/": "IPv4",
    "http://0177.0.0.1/": "IPv4",  # a dotted quad with leading zeros is ambiguous: refused
    "http://exa mple.com/": "host name",
    "http://[::1/": "parse",
    "http://8.8.8.8/" + "a" * 2048: "2048",
}


def _refusal(url: str, *, allow_loopback: bool) -> str:
    with pytest.raises(InvalidInputError) as refused:
        check_webhook_url(url, allow_loopback=allow_loopback)
    assert refused.value.field == "webhook"
    return str(refused.value)


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS)
def test_loopback_in_any_spelling_is_refused_unless_allowed(url: str) -> None:
    message = _refusal(url, allow_loopback=False)
    assert "loopback" in message and "public" in message
    check_webhook_url(url, allow_loopback=True)


@pytest.mark.parametrize(("url", "reason"), ALWAYS_REFUSED.items())
def test_other_private_addresses_are_refused_even_with_loopback_allowed(
    url: str, reason: str
) -> None:
    for allow_loopback in (False, True):
        assert reason in _refusal(url, allow_loopback=allow_loopback)


@pytest.mark.parametrize("url", PUBLIC)
def test_public_addresses_pass(url: str) -> None:
    check_webhook_url(url, allow_loopback=False)


@pytest.mark.parametrize(("url", "reason"), MALFORMED.items())
def test_malformed_urls_say_what_to_fix(url: str, reason: str) -> None:
    assert reason in _refusal(url, allow_loopback=True)


def test_the_address_policy_on_addresses() -> None:
    ip = ipaddress.ip_address
    assert address_refusal(ip("93.184.215.14")) is None
    assert address_refusal(ip("2a00:1450:4001::200e")) is None
    assert address_refusal(ip("127.0.0.1")) == "a loopback address"
    assert address_refusal(ip("127.0.0.1"), allow_loopback=True) is None
    assert address_refusal(ip("::1"), allow_loopback=True) is None
    assert address_refusal(ip("::ffff:127.0.0.1"), allow_loopback=True) is None
    for address in ("10.1.2.3", "100.100.0.1", "169.254.0.1", "0.0.0.0", "fc00::1", "::"):  # noqa: S104
        assert address_refusal(ip(address), allow_loopback=True) is not None
    assert "NAT64" in (address_refusal(ip("64:ff9b::7f00:1"), allow_loopback=True) or "")


def test_a_name_is_refused_when_any_of_its_addresses_is_private(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, "hooks.example.com", ("93.184.215.14", "10.0.0.7"))
    assert "10.0.0.7, a private address" in _refusal(
        "https://hooks.example.com/in", allow_loopback=True
    )
    fake_dns(monkeypatch, "ok.example.com", ("93.184.215.14", "2606:2800:21f:cb07::1"))
    check_webhook_url("https://ok.example.com/in", allow_loopback=False)


def test_localhost_names_are_refused_without_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = fake_dns(monkeypatch, "app.localhost", ("93.184.215.14",))
    assert "names a loopback address" in _refusal("http://app.localhost/", allow_loopback=False)
    assert lookups == []


def test_a_name_that_does_not_resolve_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(*_: Any, **__: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert "does not resolve" in _refusal("https://nowhere.example/", allow_loopback=False)


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


def test_the_secret_route_needs_the_generate_scope_and_is_stable(  # type: ignore[no-untyped-def]
    client: TestClient, developer, make_account, sessions: Sessions
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


# The outbox


def test_one_event_per_job_and_type_and_the_filter_holds(sessions: Sessions) -> None:
    every = make_job(sessions, webhook="https://hooks.example.com/all")
    assert [queue_event(sessions, every, event) for event in WEBHOOK_EVENTS] == [True] * 4
    assert [queue_event(sessions, every, event) for event in WEBHOOK_EVENTS] == [False] * 4
    stored = delivery_of(sessions, every)
    assert stored.payload == PAYLOAD and stored.url == "https://hooks.example.com/all"
    assert stored.status == DeliveryStatus.pending and stored.attempt == 0

    only_done = make_job(sessions, "https://hooks.example.com/done", events=["completed"])
    assert [queue_event(sessions, only_done, event) for event in WEBHOOK_EVENTS] == [
        False,
        False,
        False,
        True,
    ]
    assert not queue_event(sessions, make_job(sessions, webhook=None))
    with pytest.raises(ValueError, match="unknown webhook event"), session_scope(sessions) as s:
        enqueue_event(s, every, "finished", PAYLOAD)
    with sessions() as session:
        counts = {
            job.id: len(session.scalars(select(WebhookDelivery.id).filter_by(job_id=job.id)).all())
            for job in (every, only_done)
        }
    assert counts == {every.id: 4, only_done.id: 1}


def test_an_event_rolled_back_with_its_transaction_is_never_sent(sessions: Sessions) -> None:
    job = make_job(sessions, webhook="https://hooks.example.com/x")
    with sessions() as session:
        assert enqueue_event(session, job, "completed", PAYLOAD)
        session.rollback()
    assert queue_event(sessions, job)  # the first row never existed


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
    delivery = delivery_of(sessions, job)
    assert delivery.status == DeliveryStatus.pending and delivery.status_code is None
    assert "Timeout" in (delivery.last_error or "")


def test_the_retry_schedule_backs_off_for_hours() -> None:
    expected = [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert list(RETRY_DELAYS_SECONDS) == expected and MAX_ATTEMPTS == 8
    for attempt, seconds in enumerate(expected, start=1):
        delays = {retry_delay(attempt) for _ in range(50)}
        assert all(d is not None and 0.9 * seconds <= d <= 1.1 * seconds for d in delays)
        assert len(delays) > 1  # jittered
    assert retry_delay(MAX_ATTEMPTS) is None


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

    (lost,) = claim_due(sessions, now=now, lease=lease, limit=10)
    assert claim_due(sessions, now=now + timedelta(seconds=39), lease=lease, limit=10) == []
    (again,) = claim_due(sessions, now=now + timedelta(seconds=41), lease=lease, limit=10)
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
    delivery = delivery_of(sessions, job)
    assert delivery.status == DeliveryStatus.pending and delivery.status_code is None
    assert "127.0.0.1, a loopback address" in (delivery.last_error or "")


def _tls_receiver_context(tmp_path: Path, certified_name: str) -> tuple[str, ssl.SSLContext]:
    """A test CA (the path of its PEM) and a server context whose certificate names one host."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(name: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> Any:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.DNSName(name)])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = certificate("Goshen test CA", ca_key, "Goshen test CA", ca_key, ca=True)
    leaf = certificate(certified_name, leaf_key, "Goshen test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    return str(tmp_path / "ca.pem"), context


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

    ca, context = _tls_receiver_context(tmp_path, certified_name)
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
    sessions: Sessions, hook_settings: Settings, receiver: Receiver, backend: str
) -> None:
    # On PostgreSQL the poll is far longer than the test waits: only NOTIFY can wake it.
    poll = 30.0 if backend == "postgresql" else 0.1
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
