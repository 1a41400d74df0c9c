"""Rows inserted in one statement (goshen.db.pending_rows.insert_rows), and the rows a transaction
queues to insert at its commit: on SQLite and PostgreSQL, serial ids follow the rows' order and
every value comes back as it went in; a repeated unique key is skipped when asked; rows that would
lose a default or carry a naive timestamp are refused; a rolled-back transaction inserts nothing.

The rows go into the platform's own tables (job events, usage events) of real jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import Job, JobEvent, Model, PricingUnit, UsageEvent
from goshen.db.pending_rows import insert_at_commit, insert_rows
from goshen.ids import new_id
from serving.jobs import transitions
from tests.fixtures.accounts import Account

# A timestamp with microseconds and an offset that is not UTC's: it must come back the same
# instant, to the microsecond.
KOLKATA = timezone(timedelta(hours=5, minutes=30))
WHEN = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=KOLKATA)
KEY = ("job_id", "kind")  # a usage event's unique key


@pytest.fixture
def job_id(
    sessions: sessionmaker[Session], developer: Account, make_model: Callable[..., Model]
) -> str:
    """A queued job of the developer's (its own events start with its "queued" status)."""
    return _queue(sessions, developer, make_model())


def _queue(sessions: sessionmaker[Session], account: Account, model: Model) -> str:
    with session_scope(sessions) as session:
        job = Job(
            user_id=account.user_id,
            api_key_id=account.key_id,
            model_id=model.id,
            model_version="1",
            input={"digit": 1, "num_images": 1, "seed": 0},
        )
        return transitions.enqueue(session, job).id


def _event(job_id: str, number: int) -> dict[str, Any]:
    """The `number`th event of a sequence: a JSON payload awkward for any encoding, and a
    timestamp that goes back in time as the numbers grow (order must come from the rows)."""
    return {
        "job_id": job_id,
        "type": "log" if number % 2 else "progress",
        "data": {
            "number": number,
            "message": f'line {number}: héllo ✓ "quoted" \\ back\'slash',
            "nested": {"list": [1, 2.5, None, True, {"deep": "x"}], "empty": {}},
            "big": 2**53 + number,
        },
        "created_at": WHEN - timedelta(seconds=number, microseconds=number),
    }


def _events(sessions: sessionmaker[Session], job_id: str, kinds: tuple[str, ...]) -> list[Any]:
    with sessions() as session:
        return list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.type.in_(kinds))
                .order_by(JobEvent.id)
            )
        )


def _usage(job_id: str, user_id: str, cost_micros: int) -> dict[str, Any]:
    return {
        "id": new_id("use"),
        "created_at": datetime.now(UTC),
        "user_id": user_id,
        "api_key_id": None,
        "model_id": None,
        "job_id": job_id,
        "kind": "generation",
        "quantity": 1.0,
        "unit": PricingUnit.image,
        "cost_micros": cost_micros,
        "images": 1,
        "seconds": 0.25,
    }


def test_rows_get_ids_in_their_order_and_come_back_exactly_as_they_went_in(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    rows = [_event(job_id, number) for number in range(200)]
    with session_scope(sessions) as session:
        insert_rows(session, JobEvent, rows)
    events = _events(sessions, job_id, ("log", "progress"))
    assert [event.data["number"] for event in events] == list(range(200))
    for stored, row in zip(events, rows, strict=True):
        assert (stored.type, stored.data, stored.created_at) == (
            row["type"],
            row["data"],
            row["created_at"],
        )
        assert stored.created_at.tzinfo is not None


def test_rows_queued_at_commit_are_inserted_in_the_order_they_were_queued(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    """Queued one by one in a transaction, as a job's events are: inserted at its commit, not
    before, and in queue order."""
    rows = [_event(job_id, number) for number in range(30)]
    with session_scope(sessions) as session:
        for row in rows:
            insert_at_commit(session, JobEvent, row)
        assert _events(sessions, job_id, ("log", "progress")) == []  # not before the commit
    events = _events(sessions, job_id, ("log", "progress"))
    assert [(e.data, e.created_at) for e in events] == [(r["data"], r["created_at"]) for r in rows]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_on_postgresql_the_rows_go_in_one_statement(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    inserts: list[str] = []

    def count(conn: object, cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith('INSERT INTO "JOB_EVENTS"'):
            inserts.append(statement)

    engine = sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", count)
    try:
        with session_scope(sessions) as session:
            insert_rows(session, JobEvent, [_event(job_id, number) for number in range(50)])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(inserts) == 1
    assert len(_events(sessions, job_id, ("log", "progress"))) == 50


def test_a_repeated_unique_key_is_skipped_and_the_first_row_kept(
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    job_id: str,
) -> None:
    """A usage event is unique per (job, kind): a second one for the same job, in a later
    statement or later in the same one, is skipped without an error; other rows still go in."""
    other = _queue(sessions, developer, make_model())
    user = developer.user_id
    with session_scope(sessions) as session:
        insert_rows(session, UsageEvent, [_usage(job_id, user, 7)], skip_conflicts_on=KEY)
    with session_scope(sessions) as session:
        rows = [_usage(job_id, user, 9), _usage(other, user, 11), _usage(other, user, 13)]
        insert_rows(session, UsageEvent, rows, skip_conflicts_on=KEY)
    with sessions() as session:
        usage = session.execute(
            select(UsageEvent.job_id, UsageEvent.cost_micros, UsageEvent.unit)
        ).all()
    assert sorted(usage) == sorted([(job_id, 7, "image"), (other, 11, "image")])


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_rows_lacking_a_column_with_a_python_default_are_refused_by_name(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    """One statement applies no Python-side defaults, so a row must give them: a row without
    `created_at` would otherwise go in with none (or fail on NOT NULL far from the cause)."""
    row = _event(job_id, 1)
    del row["created_at"]
    with session_scope(sessions) as session, pytest.raises(ValueError, match="created_at"):
        insert_rows(session, JobEvent, [row])
    assert _events(sessions, job_id, ("log", "progress")) == []


def test_a_naive_timestamp_is_refused(sessions: sessionmaker[Session], job_id: str) -> None:
    """A timestamp without a time zone is ambiguous; it is refused, not stored as UTC. (SQLite's
    path raises it from the column type, wrapped in SQLAlchemy's StatementError.)"""
    rows = [_event(job_id, 1), {**_event(job_id, 2), "created_at": datetime(2026, 1, 1, 12)}]
    with (
        pytest.raises((ValueError, StatementError)) as refused,
        session_scope(sessions) as session,
    ):
        insert_rows(session, JobEvent, rows)
    error = refused.value
    cause = error.orig if isinstance(error, StatementError) else error
    assert isinstance(cause, ValueError) and "naive datetime" in str(cause)
    assert _events(sessions, job_id, ("log", "progress")) == []


def test_rows_queued_in_a_transaction_that_rolls_back_are_never_inserted(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    """Nor by the next transaction of the same session: only its own rows go in."""
    with sessions() as session:
        with pytest.raises(RuntimeError), session.begin():
            insert_at_commit(session, JobEvent, _event(job_id, 1))
            insert_at_commit(session, JobEvent, _event(job_id, 3))
            raise RuntimeError("the transaction fails after queuing its rows")
        with session.begin():
            insert_at_commit(session, JobEvent, _event(job_id, 2))
    assert [e.data["number"] for e in _events(sessions, job_id, ("log", "progress"))] == [2]
    with sessions() as session:
        total = session.scalar(select(func.count()).where(JobEvent.job_id == job_id))
    assert total == 2  # its "queued" status, and the one row committed
