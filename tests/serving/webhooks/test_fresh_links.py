"""Image links in webhook bodies are signed at each attempt: a retry sent after the first
attempt's links expired carries links that download, under the same `webhook-id`, with the
rest of the event unchanged; rows queued with links (before keys were stored) still deliver.

The API runs on a real uvicorn (it serves the local store's signed links); the receiver is a
real HTTP server on loopback.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import DeliveryStatus, Job, JobStatus
from goshen.storage import make_store
from serving.jobs.effects import JobEffects
from serving.webhooks.delivery import deliver_due
from serving.webhooks.outbox import enqueue_event
from tests.fixtures.servers import serve_api
from tests.serving.webhooks.factories import (
    Sessions,
    delivery_of,
    make_job,
    with_settings,
)
from tests.serving.webhooks.receivers import Receiver, status


def _links(body: bytes) -> list[str]:
    return [image["url"] for image in json.loads(body)["data"]["output"]["images"]]


def _without_links(body: bytes) -> dict[str, Any]:
    event = json.loads(body)
    for image in event["data"]["output"]["images"]:
        image.pop("url")
    return dict(event)


def test_a_retry_after_the_link_ttl_carries_links_that_download(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    short_ttl = with_settings(hook_settings, signed_url_ttl_seconds=1)
    with serve_api(short_ttl) as served:
        store = make_store(served)
        key = "outputs/webhook-test/0.png"
        store.put(key, b"\x89PNG not really", "image/png")
        job = make_job(sessions, webhook=receiver.url, events=["completed"])
        with session_scope(sessions) as session:
            row = session.get_one(Job, job.id)
            row.status = JobStatus.succeeded
            row.output = {
                "images": [{"key": key, "content_type": "image/png", "width": 1, "height": 1}]
            }
            session.flush()
            JobEffects(store, served.api_url).ended(session, row)
        assert "key" in json.dumps(delivery_of(sessions, job).payload)  # keys kept, not links

        receiver.answers.append(status(503))
        first_try = datetime.now(UTC)
        assert deliver_due(sessions, served, now=first_try, store=store) == 1
        time.sleep(2.5)  # past the 1 s link TTL
        (first_link,) = _links(receiver.received[0].body)
        assert httpx.get(first_link).status_code == 403  # expired, as the issue says

        # The retry signs with a longer TTL: a 1 s link is valid for 0-1 s (expiry is whole
        # seconds), too little to fetch it on a loaded machine; reused links would still 403.
        retry = delivery_of(sessions, job).next_attempt_at
        retry_store = make_store(with_settings(served, signed_url_ttl_seconds=600))
        assert (
            deliver_due(sessions, served, now=retry + timedelta(seconds=1), store=retry_store) == 1
        )
        assert delivery_of(sessions, job).status == DeliveryStatus.delivered

        first, second = receiver.received
        (fresh_link,) = _links(second.body)
        downloaded = httpx.get(fresh_link)
        assert downloaded.status_code == 200 and downloaded.content == b"\x89PNG not really"
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert _without_links(first.body) == _without_links(second.body)  # the same event


def test_a_row_queued_with_links_still_delivers_them(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    """Rows queued before keys were stored carry signed links: sent as stored."""
    image = {"url": "https://files.example.com/0.png?sig=x", "content_type": "image/png"}
    legacy = {"type": "job.completed", "data": {"id": "job_x", "output": {"images": [image]}}}
    job = make_job(sessions, webhook=receiver.url)
    with session_scope(sessions) as session:
        assert enqueue_event(session, job, "completed", legacy)

    assert deliver_due(sessions, hook_settings) == 1

    assert delivery_of(sessions, job).status == DeliveryStatus.delivered
    assert json.loads(receiver.received[0].body) == legacy
