"""Usage summed in SQL over a range: the range a caller's start and end mean, and sums by UTC day,
model and user that equal the seeded events, on both backends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from goshen.billing import usage
from goshen.billing.usage import GroupBy, UsageRange, UsageSums
from goshen.db import session_scope
from goshen.db.models import Model
from goshen.errors import InvalidInputError
from tests.fixtures.accounts import Account
from tests.fixtures.usage import add_usage_event

NOW = datetime(2026, 12, 5, 13, 30, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


def test_a_range_defaults_to_this_month_so_far() -> None:
    assert usage.usage_range(None, None, now=NOW) == UsageRange(
        datetime(2026, 12, 1, tzinfo=UTC), NOW
    )


def test_a_day_is_the_whole_utc_day_and_a_datetime_the_instant() -> None:
    span = usage.usage_range(date(2026, 11, 3), date(2026, 11, 3), now=NOW)
    assert span == UsageRange(datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC))
    east = datetime(2026, 11, 3, 6, tzinfo=PLUS_TWO)
    naive = datetime(2026, 11, 20, 6)
    span = usage.usage_range(east, naive, now=NOW)
    assert span == UsageRange(datetime(2026, 11, 3, 4, tzinfo=UTC), naive.replace(tzinfo=UTC))


def test_without_a_start_the_range_begins_on_the_first_of_its_last_month() -> None:
    assert usage.usage_range(None, date(2026, 10, 31), now=NOW).start == datetime(
        2026, 10, 1, tzinfo=UTC
    )
    midnight = datetime(2026, 11, 1, tzinfo=UTC)
    assert usage.usage_range(None, midnight, now=NOW).start == datetime(2026, 10, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "field", "words"),
    [
        (date(2026, 11, 2), date(2026, 11, 1), "end", "before it starts"),
        (date(2026, 12, 6), None, "start", "before it starts"),  # after now, the default end
        (date(2025, 1, 1), date(2026, 1, 2), "end", "at most 366 days"),
        (date(2025, 1, 1), None, "start", "at most 366 days"),
        (None, date(9999, 12, 31), "end", "out of range"),
        (datetime(1, 1, 1, 0, 30, tzinfo=PLUS_TWO), date(1, 1, 2), "start", "out of range"),
    ],
)
def test_an_inverted_too_long_or_unrepresentable_range_names_the_parameter(
    start: date | None, end: date | None, field: str, words: str | None
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        usage.usage_range(start, end, now=NOW)
    assert refused.value.field == field
    assert words is None or words in str(refused.value)


def test_a_leap_years_366_days_are_one_range() -> None:
    span = usage.usage_range(date(2024, 1, 1), date(2024, 12, 31), now=NOW)
    assert span.end - span.start == timedelta(days=366)


def test_sums_by_day_model_and_user_equal_the_events(
    sessions: sessionmaker[Session],
    make_account: Callable[..., Account],
    make_model: Callable[..., Model],
) -> None:
    alice, bob = make_account(), make_account()
    big, small = make_model(), make_model()
    day1, day2 = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    with session_scope(sessions) as session:
        # A minute either side of midnight falls on two UTC days.
        add_usage_event(session, alice, big, day2 - timedelta(minutes=1), 5_000, job=True, images=4)
        add_usage_event(session, alice, big, day2 + timedelta(minutes=1), 7_000, job=True, images=2)
        add_usage_event(session, alice, small, day2 + timedelta(hours=23), 10, seconds=0.25)
        add_usage_event(session, alice, None, day2 + timedelta(hours=5), 1, seconds=1.5)
        add_usage_event(session, bob, small, day1 + timedelta(hours=3), 300, seconds=2.0)
        # Outside [Nov 1, Nov 3): the day before, and the range's excluded end.
        add_usage_event(session, alice, big, day1 - timedelta(microseconds=1), 1_000_000, job=True)
        add_usage_event(session, alice, big, day2 + timedelta(days=1), 1_000_000, job=True)
    span = UsageRange(day1, day2 + timedelta(days=1))
    with sessions() as session:
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            # The day is UTC's, whatever the session's time zone.
            session.execute(text("SET TIME ZONE 'Pacific/Kiritimati'"))
        assert usage.totals(session, span, alice.user_id) == UsageSums(12_011, 2, 2, 6, 1.75)
        assert usage.totals(session, span) == UsageSums(12_311, 2, 3, 6, 3.75)
        days = usage.grouped(session, span, GroupBy.day, user_id=alice.user_id)
        assert [(group.day, group.sums) for group in days] == [
            (date(2026, 11, 1), UsageSums(5_000, 1, 0, 4, 0.0)),
            (date(2026, 11, 2), UsageSums(7_011, 1, 2, 2, 1.75)),
        ]
        models = usage.grouped(session, span, GroupBy.model, user_id=alice.user_id)
        assert [(group.model_id, group.model, group.sums.cost_micros) for group in models] == [
            (big.id, big.name, 12_000),
            (small.id, small.name, 10),
            (None, None, 1),
        ]
        users = usage.grouped(session, span, GroupBy.user)
        assert [(group.user_id, group.sums.cost_micros) for group in users] == [
            (alice.user_id, 12_011),
            (bob.user_id, 300),
        ]
        assert usage.grouped(session, span, GroupBy.user, limit=1)[0].user_id == alice.user_id
        empty = UsageRange(day1 - timedelta(days=30), day1 - timedelta(days=29))
        assert usage.totals(session, empty) == UsageSums(0, 0, 0, 0, 0.0)
        assert usage.grouped(session, empty, GroupBy.day) == []
