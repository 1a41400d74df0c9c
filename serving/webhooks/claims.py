"""The outbox side of delivery: claiming due rows for one attempt each, and recording outcomes.

Claims are short transactions (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several dispatchers
share the outbox) that push `next_attempt_at` ahead by a lease: a crashed dispatcher's claims
come back by themselves. An outcome is written only if the claim is still ours.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import DeliveryStatus, Job, User, WebhookDelivery, in_sql
from goshen.storage import ArtifactStore
from serving.webhooks.attempt import AttemptResult, ClaimedDelivery, receiver_key
from serving.webhooks.outbox import canonical_body
from serving.webhooks.payload import render_payload
from serving.webhooks.signing import webhook_secret_for

log = logging.getLogger(__name__)

# Svix / Standard Webhooks: after the first attempt, wait this long before each retry.
RETRY_DELAYS_SECONDS = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
RETRY_JITTER = 0.1
MAX_ATTEMPTS = 1 + len(RETRY_DELAYS_SECONDS)
# A receiver answering 410 Gone asks not to be sent this again (Standard Webhooks).
GIVE_UP_STATUS_CODES = frozenset({410})
# Due rows read at a time to find some whose receiver is under its limit. Rows of receivers at
# their limit are left alone (no attempt spent), and read past.
SCAN_ROWS = 512


def retry_delay(attempt: int, base_seconds: float = RETRY_DELAYS_SECONDS[0]) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (from 1), or None to give up; the
    schedule scaled so that the first wait is `base_seconds` (GOSHEN_WEBHOOK_RETRY_BASE_SECONDS)."""
    if attempt >= MAX_ATTEMPTS:
        return None
    scale = base_seconds / RETRY_DELAYS_SECONDS[0]
    jitter = random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
    return RETRY_DELAYS_SECONDS[attempt - 1] * scale * jitter


def claim_due(
    factory: sessionmaker[Session],
    *,
    now: datetime,
    lease: timedelta,
    limit: int,
    store: ArtifactStore,
    busy: Mapping[str, int] | None = None,
    per_receiver: int | None = None,
    retry_base_seconds: float = RETRY_DELAYS_SECONDS[0],
) -> list[ClaimedDelivery]:
    """Take up to `limit` due deliveries for one attempt each, in one short transaction.

    With `per_receiver`, a receiver (scheme, host, port) that already has `busy[receiver]`
    attempts in flight gets at most `per_receiver` in all; its other due rows stay untouched,
    due as before. Each body is rendered now, with freshly signed links.
    """
    with session_scope(factory) as session:
        chosen = _under_limits(session, now, limit, busy or {}, per_receiver)
        if not chosen:
            return []
        due = (
            select(WebhookDelivery, Job.user_id, Job.request_id, Job.traceparent)
            .join(Job, Job.id == WebhookDelivery.job_id)
            .where(
                WebhookDelivery.id.in_(chosen),
                WebhookDelivery.status == in_sql(DeliveryStatus.pending),
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at)
            # PostgreSQL: dispatchers skip each other's rows, and a row another one claimed since
            # it was chosen fails the WHERE, which is checked again once locked. SQLite renders
            # no FOR UPDATE; its transactions begin IMMEDIATE, which serializes claims.
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        )
        claimed = []
        for delivery, user_id, request_id, traceparent in session.execute(due).all():
            delivery.attempt += 1
            delivery.next_attempt_at = now + lease
            try:
                with session.begin_nested():
                    body = canonical_body(render_payload(delivery.payload, store))
                    secret = webhook_secret_for(session, session.get_one(User, user_id))
            except Exception as exc:  # this row alone: one that cannot be sent blocks no other
                log.exception("webhook %s could not be prepared", delivery.event_id)
                _unsendable(delivery, now, f"{type(exc).__name__}: {exc}", retry_base_seconds)
                continue
            claimed.append(
                ClaimedDelivery(
                    id=delivery.id,
                    event_id=delivery.event_id,
                    url=delivery.url,
                    body=body,
                    attempt=delivery.attempt,
                    secret=secret,
                    job_id=delivery.job_id,
                    request_id=request_id,
                    traceparent=traceparent,
                )
            )
    return claimed


def _unsendable(
    delivery: WebhookDelivery, now: datetime, error: str, retry_base_seconds: float
) -> None:
    """An attempt spent on a delivery whose body or signature could not be made: retried on the
    schedule (the cause may pass, say the artifact store's credentials), then failed."""
    delivery.last_error = f"could not prepare the delivery: {error}"
    delay = retry_delay(delivery.attempt, retry_base_seconds)
    if delay is None:
        delivery.status = DeliveryStatus.failed
    else:
        delivery.next_attempt_at = now + timedelta(seconds=delay)


def _under_limits(
    session: Session,
    now: datetime,
    limit: int,
    busy: Mapping[str, int],
    per_receiver: int | None,
) -> list[str]:
    """Ids of up to `limit` due rows, oldest first, none taking a receiver past its limit."""
    size = limit if per_receiver is None else max(limit, SCAN_ROWS)
    due = (
        select(WebhookDelivery.id, WebhookDelivery.url, WebhookDelivery.next_attempt_at)
        .where(
            WebhookDelivery.status == in_sql(DeliveryStatus.pending),
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(size)
    )
    taken: Counter[str] = Counter(busy)
    chosen: list[str] = []
    page = due
    while True:
        rows = session.execute(page).all()
        for delivery_id, url, _ in rows:
            receiver = receiver_key(url)
            if per_receiver is not None and taken[receiver] >= per_receiver:
                continue
            taken[receiver] += 1
            chosen.append(delivery_id)
            if len(chosen) == limit:
                return chosen
        if per_receiver is None or len(rows) < size:
            return chosen
        # Every row of this page was a receiver's at its limit: read on past them (keyset), so
        # one receiver's backlog never hides the others' due rows.
        last_id, _, last_at = rows[-1]
        page = due.where(
            or_(
                WebhookDelivery.next_attempt_at > last_at,
                and_(WebhookDelivery.next_attempt_at == last_at, WebhookDelivery.id > last_id),
            )
        )


def record_attempt(
    factory: sessionmaker[Session],
    claim: ClaimedDelivery,
    result: AttemptResult,
    *,
    at: datetime,
    retry_base_seconds: float = RETRY_DELAYS_SECONDS[0],
) -> None:
    """Store an attempt's outcome and schedule what follows, unless the claim was lost."""
    values: dict[str, object] = {"status_code": result.status_code, "last_error": result.error}
    gives_up = result.permanent or result.status_code in GIVE_UP_STATUS_CODES
    delay = None if gives_up else retry_delay(claim.attempt, retry_base_seconds)
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
                WebhookDelivery.status == in_sql(DeliveryStatus.pending),
            )
            .values(**values)
        )
