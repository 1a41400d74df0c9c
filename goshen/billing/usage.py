"""Metered usage over a time range, summed in the database: totals, and groups by UTC day, by
model or by user.

Every query filters `usage_events.created_at` to a half-open range [start, end) and aggregates
with GROUP BY, so no event row reaches Python. A user's own range uses the index on
(user_id, created_at); ranges across all users want one on (created_at).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Date, Label, Select, Subquery, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from goshen.db.models import Model, UsageEvent, User, utcnow
from goshen.errors import InvalidInputError

MAX_RANGE = timedelta(days=366)


class utc_day(FunctionElement[date]):  # an SQL function, named like one
    """The UTC calendar day of a timestamp column, as a DATE on PostgreSQL and SQLite alike."""

    type = Date()
    name = "utc_day"
    inherit_cache = True


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # timestamptz AT TIME ZONE 'UTC' is the UTC wall time, whatever the session's time zone.
    return f"CAST(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC' AS DATE)"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite stores UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text (goshen.db UTCDateTime).
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day)
def _utc_day_default(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS DATE)"


@dataclass(frozen=True)
class UsageRange:
    """A half-open range of time, in UTC: `start` included, `end` not."""

    start: datetime
    end: datetime


def usage_range(
    start: date | datetime | None, end: date | datetime | None, now: datetime | None = None
) -> UsageRange:
    """The range a caller asked for; InvalidInputError naming `start` or `end` when it is wrong.

    A date stands for its whole UTC day (so `end=2026-12-31` includes the 31st), a datetime for
    that instant (naive ones are UTC; `end` is excluded). Without `end`, the range ends now;
    without `start`, it begins on the first of the month it ends in.
    """
    try:
        end_at = _instant(end, next_day=True) if end is not None else now or utcnow()
    except OverflowError as error:
        raise InvalidInputError(f"end is out of range: {error}", field="end") from error
    try:
        start_at = _instant(start) if start is not None else _month_start(end_at)
    except OverflowError as error:
        raise InvalidInputError(f"start is out of range: {error}", field="start") from error
    # Name what the caller sent: a defaulted end (now) is not theirs to fix.
    field = "end" if end is not None else "start"
    if end_at <= start_at:
        raise InvalidInputError(
            f"the range ends ({end_at.isoformat()}) before it starts ({start_at.isoformat()}): "
            "send an end after the start",
            field=field,
        )
    if end_at - start_at > MAX_RANGE:
        raise InvalidInputError(
            f"a range may span at most {MAX_RANGE.days} days; this one spans "
            f"{(end_at - start_at).days}: ask for a shorter one",
            field=field,
        )
    return UsageRange(start_at, end_at)


def _instant(value: date | datetime, *, next_day: bool = False) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    day = value + timedelta(days=1) if next_day else value
    return datetime.combine(day, time(), UTC)


def _month_start(end: datetime) -> datetime:
    """Midnight on the first of the month that the range's last instant falls in."""
    last = end - timedelta(microseconds=1) if end > datetime.min.replace(tzinfo=UTC) else end
    return datetime.combine(last.date().replace(day=1), time(), UTC)


@dataclass(frozen=True)
class UsageSums:
    """What a set of usage events adds up to."""

    cost_micros: int
    jobs: int
    requests: int
    images: int
    seconds: float


class GroupBy(StrEnum):
    user = "user"
    model = "model"
    day = "day"


@dataclass(frozen=True)
class UsageGroup:
    """The sums of one group; only the fields of its grouping are set (the model's and the
    user's are None when the model or user is gone)."""

    sums: UsageSums
    day: date | None = None
    model_id: str | None = None
    model: str | None = None
    user_id: str | None = None
    email: str | None = None


def _sum_columns() -> tuple[ColumnElement[Any], ...]:
    jobs = func.count(UsageEvent.job_id) + func.count(UsageEvent.training_job_id)
    return (
        func.coalesce(func.sum(UsageEvent.cost_micros), 0).label("cost_micros"),
        jobs.label("jobs"),
        (func.count() - jobs).label("requests"),
        func.coalesce(func.sum(UsageEvent.images), 0).label("images"),
        func.coalesce(func.sum(UsageEvent.seconds), 0.0).label("seconds"),
    )


def _sums(row: Any) -> UsageSums:
    # PostgreSQL's sum of a bigint is a numeric (a Decimal here).
    return UsageSums(
        cost_micros=int(row.cost_micros),
        jobs=int(row.jobs),
        requests=int(row.requests),
        images=int(row.images),
        seconds=float(row.seconds),
    )


def _in_range(query: Select[Any], span: UsageRange, user_id: str | None) -> Select[Any]:
    query = query.where(UsageEvent.created_at >= span.start, UsageEvent.created_at < span.end)
    return query if user_id is None else query.where(UsageEvent.user_id == user_id)


def totals(session: Session, span: UsageRange, user_id: str | None = None) -> UsageSums:
    """The sums of every event in the range (of one user, or of all)."""
    return _sums(session.execute(_in_range(select(*_sum_columns()), span, user_id)).one())


def grouped(
    session: Session,
    span: UsageRange,
    group_by: GroupBy,
    *,
    user_id: str | None = None,
    limit: int | None = None,
) -> list[UsageGroup]:
    """The range's sums per group: days oldest first, models and users by cost, highest first.

    Groups without events are left out; `limit` keeps the first that many.
    """
    query = _named(group_by, _in_range(_summed_by(group_by), span, user_id).subquery())
    if limit is not None:
        query = query.limit(limit)
    return [_group(group_by, row) for row in session.execute(query)]


def _summed_by(group_by: GroupBy) -> Select[Any]:
    key: Label[Any]
    if group_by is GroupBy.day:
        key = utc_day(UsageEvent.created_at).label("key")
    elif group_by is GroupBy.model:
        key = UsageEvent.model_id.label("key")
    else:
        key = UsageEvent.user_id.label("key")
    return select(key, *_sum_columns()).group_by(key)


def _named(group_by: GroupBy, sums: Subquery) -> Select[Any]:
    """The groups' sums in order, with the names of their models or users (joined to the
    groups, not to every event)."""
    columns = [sums.c.cost_micros, sums.c.jobs, sums.c.requests, sums.c.images, sums.c.seconds]
    if group_by is GroupBy.day:
        return select(sums.c.key, *columns).order_by(sums.c.key)
    by_cost = sums.c.cost_micros.desc()
    if group_by is GroupBy.model:
        return (
            select(sums.c.key, Model.name.label("name"), *columns)
            .outerjoin(Model, Model.id == sums.c.key)
            .order_by(by_cost, sums.c.key.asc().nulls_last())
        )
    return (
        select(sums.c.key, User.email.label("name"), *columns)
        .outerjoin(User, User.id == sums.c.key)
        .order_by(by_cost, sums.c.key)
    )


def _group(group_by: GroupBy, row: Any) -> UsageGroup:
    sums = _sums(row)
    if group_by is GroupBy.day:
        return UsageGroup(sums, day=row.key)
    if group_by is GroupBy.model:
        return UsageGroup(sums, model_id=row.key, model=row.name)
    return UsageGroup(sums, user_id=row.key, email=row.name)
