"""The webhook outbox: one row per (job, event type), added in the transaction that causes the
event; `serving.webhooks.delivery` signs and posts them, outside the GPU worker."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from goshen.db import access
from goshen.db.models import Job, WebhookDelivery
from goshen.db.notifications import WEBHOOKS_CHANNEL, notify

WEBHOOK_EVENTS = ("start", "output", "logs", "completed")


def canonical_body(payload: dict[str, Any]) -> bytes:
    """The bytes sent and signed for a payload: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def wanted_events(job: Job) -> tuple[str, ...]:
    """The event types the job's webhook receives (an empty filter means all of them)."""
    return tuple(job.webhook_events or WEBHOOK_EVENTS)


def wants(job: Job, event_type: str) -> bool:
    """Whether the job has a webhook that receives `event_type` (a known event type)."""
    if event_type not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event_type!r}; expected one of {WEBHOOK_EVENTS}")
    return bool(job.webhook) and event_type in wanted_events(job)


def enqueue_event(session: Session, job: Job, event_type: str, payload: dict[str, Any]) -> bool:
    """Add the job's `event_type` delivery to the outbox once; True if a row was added.

    Runs in the caller's transaction. A job that has no webhook, filters the event out, or
    already has this event (a job run twice) adds nothing.
    """
    if not wants(job, event_type):
        return False
    canonical_body(payload)  # refuse a payload that cannot be sent before it is stored
    added = access.insert_once(
        session,
        WebhookDelivery,
        {"job_id": job.id, "event_type": event_type, "url": job.webhook, "payload": payload},
        ("job_id", "event_type"),
    )
    if added:
        notify(session, WEBHOOKS_CHANNEL)
    return added
