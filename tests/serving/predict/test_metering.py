"""Buffered usage events for /predict, on both backends."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.db.models import UsageEvent
from serving.predict.metering import UsageRecorder
from tests.fixtures.accounts import Account


def _event(account: Account) -> dict:
    return {
        "user_id": account.user_id,
        "api_key_id": account.key_id,
        "model_id": None,
        "job_id": None,
        "kind": "prediction",
        "quantity": 1.0,
        "unit": "request",
        "cost_micros": 250,
        "images": None,
        "seconds": 0.001,
    }


def test_events_are_written_once_even_when_a_flush_is_retried(
    sessions: sessionmaker[Session], developer: Account
) -> None:
    """A flush whose commit landed but whose answer was lost retries the same rows: they are
    not written twice, and the events queued after them still are."""
    recorder = UsageRecorder(sessions)
    for _ in range(3):
        recorder.record(**_event(developer))
    pending = list(recorder._pending)
    assert recorder.flush() == 3
    recorder._pending[:0] = pending  # as the flush's error path puts them back
    recorder.record(**_event(developer))
    assert recorder.flush() == 4
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(UsageEvent)) == 4


def test_an_event_is_stored_as_recorded(
    sessions: sessionmaker[Session], developer: Account
) -> None:
    """Every value survives the trip (on PostgreSQL, through JSON): the timestamp with its zone,
    floats, integers, nulls and the unit."""
    recorder = UsageRecorder(sessions)
    recorder.record(**{**_event(developer), "seconds": 0.000123456789, "images": 3})
    recorded = dict(recorder._pending[0])
    assert recorder.flush() == 1
    with sessions() as session:
        stored = session.scalars(select(UsageEvent)).one()
    assert stored.created_at == recorded["created_at"]
    assert (stored.user_id, stored.api_key_id, stored.model_id) == (
        developer.user_id,
        developer.key_id,
        None,
    )
    assert (stored.kind, stored.unit, stored.quantity) == ("prediction", "request", 1.0)
    assert (stored.cost_micros, stored.images, stored.seconds) == (250, 3, 0.000123456789)
