"""Webhook deliveries counted from the outbox, for the API's /metrics at scrape time.

Counting rows (rather than incrementing counters in the dispatcher) keeps the numbers right
with any number of dispatchers on any hosts, and across their restarts.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.db.models import DeliveryStatus, WebhookDelivery
from serving.webhooks.attempt import NOT_RETRIED
from serving.webhooks.claims import GIVE_UP_STATUS_CODES

# Why a failed delivery ended: its URL was refused for good, the receiver answered 410 Gone,
# or every attempt of the retry schedule failed.
FAILURE_REASONS = ("refused", "gone", "exhausted")
# Deliveries by status, and failed ones by reason.
DeliveryCounts = tuple[dict[str, int], dict[str, int]]


def delivery_counts(factory: sessionmaker[Session]) -> DeliveryCounts:
    """Deliveries by status (every status, zeros included), and failed ones by reason."""
    reason = case(
        (WebhookDelivery.last_error.startswith(NOT_RETRIED), "refused"),
        (WebhookDelivery.status_code.in_(GIVE_UP_STATUS_CODES), "gone"),
        else_="exhausted",
    )
    by_status: Counter[str] = Counter({status.value: 0 for status in DeliveryStatus})
    by_reason: Counter[str] = Counter(dict.fromkeys(FAILURE_REASONS, 0))
    with factory() as session:
        for status, count in session.execute(
            select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
        ):
            by_status[DeliveryStatus(status).value] += count
        failed = (
            select(reason, func.count())
            .where(WebhookDelivery.status == DeliveryStatus.failed)
            .group_by(reason)
        )
        for why, count in session.execute(failed):
            by_reason[why] += count
    return dict(by_status), dict(by_reason)
