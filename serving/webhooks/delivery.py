"""`goshen webhooks`: claims due outbox rows, posts them signed, and retries for hours.

Claims are short transactions (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several dispatchers
share the outbox) that push `next_attempt_at` ahead by a lease: a crashed dispatcher's claims
come back by themselves. Posting happens outside any transaction, to the address that passed the
URL guard at that moment, and its outcome is written only if the claim is still ours.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import DeliveryStatus, Job, User, WebhookDelivery, utcnow
from goshen.db.notifications import WEBHOOKS_CHANNEL, Listener
from goshen.errors import InvalidInputError
from serving.webhooks.outbox import canonical_body
from serving.webhooks.signing import signature_headers, webhook_secret_for
from serving.webhooks.url_guard import resolve_webhook_url

log = logging.getLogger(__name__)

# Svix / Standard Webhooks: after the first attempt, wait this long before each retry.
RETRY_DELAYS_SECONDS = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
RETRY_JITTER = 0.1
MAX_ATTEMPTS = 1 + len(RETRY_DELAYS_SECONDS)
# A receiver answering 410 Gone asks not to be sent this again (Standard Webhooks).
GIVE_UP_STATUS_CODES = frozenset({410})
MAX_RESPONSE_BYTES = 64 * 1024
CLAIM_MARGIN_SECONDS = 30.0
BATCH_SIZE = 16
STOP_CHECK_SECONDS = 0.5
USER_AGENT = "Goshen-Webhooks/1"


@dataclass(frozen=True)
class ClaimedDelivery:
    """One attempt this dispatcher owns: what to send, where, and with which key."""

    id: str
    event_id: str
    url: str
    body: bytes
    attempt: int
    secret: str


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(attempt: int) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (from 1), or None to give up."""
    if attempt >= MAX_ATTEMPTS:
        return None
    return RETRY_DELAYS_SECONDS[attempt - 1] * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)


def claim_due(
    factory: sessionmaker[Session], *, now: datetime, lease: timedelta, limit: int
) -> list[ClaimedDelivery]:
    """Take up to `limit` due deliveries for one attempt each, in one short transaction."""
    due = (
        select(WebhookDelivery, Job.user_id)
        .join(Job, Job.id == WebhookDelivery.job_id)
        .where(
            WebhookDelivery.status == DeliveryStatus.pending,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        # PostgreSQL: dispatchers skip each other's rows. SQLite renders no FOR UPDATE; its
        # transactions begin IMMEDIATE, which serializes claims.
        .with_for_update(skip_locked=True, of=WebhookDelivery)
    )
    with session_scope(factory) as session:
        claimed = []
        for delivery, user_id in session.execute(due).all():
            delivery.attempt += 1
            delivery.next_attempt_at = now + lease
            user = session.get_one(User, user_id)
            claimed.append(
                ClaimedDelivery(
                    id=delivery.id,
                    event_id=delivery.event_id,
                    url=delivery.url,
                    body=canonical_body(delivery.payload),
                    attempt=delivery.attempt,
                    secret=webhook_secret_for(session, user),
                )
            )
    return claimed


def post_delivery(claim: ClaimedDelivery, settings: Settings, *, at: datetime) -> AttemptResult:
    """One signed POST, to the address the URL guard passed just now; never raises for HTTP."""
    try:
        target = resolve_webhook_url(claim.url, allow_loopback=settings.webhook_allow_loopback)
    except InvalidInputError as exc:
        return AttemptResult(None, str(exc))
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signature_headers(claim.secret, claim.event_id, int(at.timestamp()), claim.body),
    }
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
    deadline = time.monotonic() + settings.webhook_timeout_seconds
    # A client per attempt: no pooled connection, verified for one name, is reused for another.
    client = httpx.Client(
        follow_redirects=False, timeout=settings.webhook_timeout_seconds, trust_env=False
    )
    try:
        with (
            client,
            client.stream(
                "POST",
                target.connect_url,
                content=claim.body,
                headers=headers,
                extensions=extensions,
            ) as response,
        ):
            head = _read_bounded(response, deadline)
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"{type(exc).__name__}: {str(exc) or 'no detail'}")
    except TimeoutError:
        return AttemptResult(None, "the response took longer than GOSHEN_WEBHOOK_TIMEOUT_SECONDS")
    return _result(response, head)


def _read_bounded(response: httpx.Response, deadline: float) -> bytes:
    """At most MAX_RESPONSE_BYTES of the (still encoded) body, within the deadline."""
    received = bytearray()
    for chunk in response.iter_raw():
        received += chunk
        if len(received) >= MAX_RESPONSE_BYTES:
            break
        if time.monotonic() > deadline:
            raise TimeoutError
    return bytes(received[:MAX_RESPONSE_BYTES])


def _result(response: httpx.Response, head: bytes) -> AttemptResult:
    status = response.status_code
    if 200 <= status < 300:
        return AttemptResult(status, None)
    if 300 <= status < 400:
        location = response.headers.get("location", "nowhere")
        return AttemptResult(status, f"HTTP {status} redirect to {location} (not followed)")
    snippet = head[:200].decode("utf-8", "replace")
    return AttemptResult(status, f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}")


def record_attempt(
    factory: sessionmaker[Session], claim: ClaimedDelivery, result: AttemptResult, *, at: datetime
) -> None:
    """Store an attempt's outcome and schedule what follows, unless the claim was lost."""
    values: dict[str, object] = {"status_code": result.status_code, "last_error": result.error}
    delay = None if result.status_code in GIVE_UP_STATUS_CODES else retry_delay(claim.attempt)
    if result.delivered:
        values |= {"status": DeliveryStatus.delivered, "delivered_at": at}
    elif delay is None:
        values |= {"status": DeliveryStatus.failed}
    else:
        values |= {"next_attempt_at": at + timedelta(seconds=delay)}
    with session_scope(factory) as session:
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claim.id,
                WebhookDelivery.attempt == claim.attempt,
                WebhookDelivery.status == DeliveryStatus.pending,
            )
            .values(**values)
        )


def deliver_due(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    limit: int = BATCH_SIZE,
    now: datetime | None = None,
) -> int:
    """One pass: claim what is due at `now`, post it all concurrently, record; the count."""
    started = now or utcnow()
    lease = timedelta(seconds=settings.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS)
    claims = claim_due(factory, now=started, lease=lease, limit=limit)
    if not claims:
        return 0
    clock = time.monotonic()

    def attempt(claim: ClaimedDelivery) -> None:
        result = post_delivery(claim, settings, at=started)
        finished = started + timedelta(seconds=time.monotonic() - clock)
        record_attempt(factory, claim, result, at=finished)
        log.info("webhook %s attempt %d: %s", claim.event_id, claim.attempt, _summary(result))

    with ThreadPoolExecutor(max_workers=len(claims), thread_name_prefix="webhook") as pool:
        list(pool.map(attempt, claims))
    return len(claims)


def _summary(result: AttemptResult) -> str:
    return "delivered" if result.delivered else f"failed ({result.error})"


def run_dispatcher(settings: Settings, stop: threading.Event) -> int:
    """Deliver webhooks until `stop` is set; PostgreSQL NOTIFY wakes it, polling is the fallback."""
    engine = make_engine(
        settings.resolved_database_url, timeout=settings.dependency_timeout_seconds
    )
    listener = Listener(settings.resolved_database_url, (WEBHOOKS_CHANNEL,))
    try:
        migrate.upgrade(engine)
        factory = make_sessionmaker(engine)
        log.info("webhook dispatcher ready")
        while not stop.is_set():
            try:
                busy = deliver_due(factory, settings) == BATCH_SIZE
            except OperationalError as exc:
                log.warning("platform database unavailable, retrying: %s", exc)
                busy = False
            if not busy:
                _wait_for_work(listener, settings.queue_poll_seconds, stop)
        log.info("webhook dispatcher stopped")
    finally:
        listener.close()
        engine.dispose()
    return 0


def _wait_for_work(listener: Listener, poll_seconds: float, stop: threading.Event) -> None:
    """Until a webhook NOTIFY (PostgreSQL), `stop`, or the poll interval; in slices, so that a
    stop request is seen within STOP_CHECK_SECONDS."""
    deadline = time.monotonic() + poll_seconds
    while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        if listener.wait(min(left, STOP_CHECK_SECONDS)):
            return
