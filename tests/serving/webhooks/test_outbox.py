"""The webhook outbox: the canonical JSON body, one event per job and type within the job's filter,
and events that live and die with their transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from goshen.db import session_scope
from goshen.db.models import DeliveryStatus, WebhookDelivery
from serving.webhooks.outbox import WEBHOOK_EVENTS, canonical_body, enqueue_event
from tests.serving.webhooks.factories import (
    PAYLOAD,
    Sessions,
    delivery_of,
    make_job,
    queue_event,
)

# The outbox


def test_the_body_is_canonical_json() -> None:
    assert canonical_body({"b": 1, "a": [1, 2], "c": "ü"}) == '{"a":[1,2],"b":1,"c":"ü"}'.encode()
    with pytest.raises(ValueError):
        canonical_body({"x": float("nan")})


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
