"""The platform's figures over a recent window, for admins: the queue's (jobs by status, queue
depth, queue and run time percentiles) beside metered usage, spend, workers and the catalog.

Percentiles are computed in Python, the same way on PostgreSQL and SQLite, over a bounded query:
the window's most recent `SAMPLE` values, interpolated linearly between the closest ranks as
PostgreSQL's `percentile_cont` does. Usage sums read `usage_events` through its `created_at`
index; jobs created in the window are found through the primary key (ids sort by creation
time), queued jobs through the claim index (which holds exactly the queued ones), jobs
completed in the window through `ix_jobs_completed_at`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Select, bindparam, case, cast, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.types import Integer

from goshen.db.models import Job, JobStatus, Model, ModelStatus, UsageEvent, Worker, WorkerStatus
from goshen.ids import smallest_id_at
from serving.schemas.admin_ops import (
    AdminStats,
    Percentiles,
    PredictionStats,
    SpendStats,
    StatsBucket,
    StatsWindow,
)

WINDOWS = {
    StatsWindow.m5: timedelta(minutes=5),
    StatsWindow.m15: timedelta(minutes=15),
    StatsWindow.h1: timedelta(hours=1),
    StatsWindow.h6: timedelta(hours=6),
    StatsWindow.h24: timedelta(hours=24),
    StatsWindow.d7: timedelta(days=7),
}
# Percentiles are read over at most this many of the window's most recent values.
SAMPLE = 10_000
# An id's time and its row's created_at are read moments apart: the id bound keeps a margin.
ID_MARGIN = timedelta(seconds=1)
PREDICTION = "prediction"
# The window's slices in `series`.
BUCKETS = 60


def platform_stats(session: Session, window: StatsWindow, stale_after_seconds: float) -> AdminStats:
    """Every figure of the admin stats route, for the `window` up to now."""
    span = WINDOWS[window]
    end = datetime.now(UTC)
    start = end - span
    minutes = span.total_seconds() / 60
    queued = queue_depth(session)
    usage = usage_sums(session, start, end)
    return AdminStats(
        window=window,
        start=start,
        end=end,
        jobs_by_status=jobs_by_status(session, start),
        queued=sum(queued.values()),
        queued_by_model=queued,
        queue_seconds=_percentiles(session, _completed(Job.queue_seconds, start)),
        run_seconds=_percentiles(session, _completed(Job.run_seconds, start)),
        images_per_minute=usage["images"] / minutes,
        predictions=PredictionStats(
            count=usage["predictions"],
            per_minute=usage["predictions"] / minutes,
            p95_seconds=_percentiles(session, _prediction_seconds(start)).p95,
        ),
        spend=SpendStats(
            window_micros=usage["window"],
            today_micros=usage["today"],
            month_micros=usage["month"],
        ),
        workers_alive=workers_alive(session, end, stale_after_seconds),
        models_deployed=session.scalar(
            select(func.count()).select_from(Model).where(Model.status == ModelStatus.ready)
        )
        or 0,
        series=series(session, start, span),
    )


def series(session: Session, start: datetime, span: timedelta) -> list[StatsBucket]:
    """The window in BUCKETS slices: jobs created, and images, predictions and cost metered in
    each. Two grouped queries, the slice computed in SQL on either database."""
    width = span.total_seconds() / BUCKETS
    usage = session.execute(
        select(
            (slice_of := _slice(session, UsageEvent.created_at, start, width)),
            func.sum(UsageEvent.images),
            func.sum(case((UsageEvent.kind == PREDICTION, 1), else_=0)),
            func.sum(UsageEvent.cost_micros),
        )
        .where(UsageEvent.created_at >= start)
        .group_by(slice_of)
    ).all()
    jobs = session.execute(
        select((job_slice := _slice(session, Job.created_at, start, width)), func.count())
        .where(Job.id >= smallest_id_at("job", start - ID_MARGIN), Job.created_at >= start)
        .group_by(job_slice)
    ).all()
    buckets = [
        StatsBucket(
            start=start + index * timedelta(seconds=width),
            jobs=0,
            images=0,
            predictions=0,
            cost_micros=0,
        )
        for index in range(BUCKETS)
    ]
    for index, images, predictions, cost in usage:
        bucket = buckets[min(max(int(index), 0), BUCKETS - 1)]
        bucket.images += int(images or 0)
        bucket.predictions += int(predictions or 0)
        bucket.cost_micros += int(cost or 0)
    for index, count in jobs:
        buckets[min(max(int(index), 0), BUCKETS - 1)].jobs += count
    return buckets


def _slice(
    session: Session, column: InstrumentedAttribute[datetime], start: datetime, width: float
) -> ColumnElement[int]:
    """Which `width`-second slice since `start` a timestamp falls in."""
    since = bindparam("series_start", start, type_=column.type)
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column - since) / width), Integer)
    # SQLite's CAST truncates, which is the floor here: rows are at or after `start`.
    seconds = (func.julianday(column) - func.julianday(since)) * 86400.0
    return cast(seconds / width, Integer)


def jobs_by_status(session: Session, start: datetime) -> dict[str, int]:
    """Jobs created since `start`, by their status now; every status, 0 included."""
    rows = session.execute(
        select(Job.status, func.count())
        .where(Job.id >= smallest_id_at("job", start - ID_MARGIN), Job.created_at >= start)
        .group_by(Job.status)
    ).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update({str(status): count for status, count in rows})
    return counts


def queue_depth(session: Session) -> dict[str, int]:
    """Jobs queued now by model name, largest first."""
    rows = session.execute(
        select(Model.name, func.count())
        .join(Job, Job.model_id == Model.id)
        .where(Job.status == JobStatus.queued)
        .group_by(Model.name)
        .order_by(func.count().desc(), Model.name)
    ).all()
    return {name: count for name, count in rows}


def workers_alive(session: Session, now: datetime, stale_after_seconds: float) -> int:
    """Workers not stopped whose last heartbeat is at most `stale_after_seconds` old."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Worker)
            .where(
                Worker.heartbeat_at >= now - timedelta(seconds=stale_after_seconds),
                Worker.status != WorkerStatus.stopped,
            )
        )
        or 0
    )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The `fraction` percentile of sorted values, interpolated as `percentile_cont` does."""
    rank = fraction * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _percentiles(session: Session, values: Select[float | None]) -> Percentiles:
    ordered = sorted(value for value in session.scalars(values) if value is not None)
    if not ordered:
        return Percentiles(count=0, p50=None, p95=None)
    return Percentiles(
        count=len(ordered), p50=percentile(ordered, 0.5), p95=percentile(ordered, 0.95)
    )


def _completed(
    column: InstrumentedAttribute[float | None], start: datetime
) -> Select[float | None]:
    """`column` of the most recent jobs completed since `start` that have it."""
    return (
        select(column)
        .where(Job.completed_at >= start, column.isnot(None))
        .order_by(Job.completed_at.desc())
        .limit(SAMPLE)
    )


def _prediction_seconds(start: datetime) -> Select[float | None]:
    return (
        select(UsageEvent.seconds)
        .where(
            UsageEvent.created_at >= start,
            UsageEvent.kind == PREDICTION,
            UsageEvent.seconds.isnot(None),
        )
        .order_by(UsageEvent.created_at.desc())
        .limit(SAMPLE)
    )


def usage_sums(session: Session, start: datetime, end: datetime) -> dict[str, int]:
    """Images and prediction requests in the window, and cost in the window, today and this
    month: one pass over usage since the earliest of them."""
    today = end.replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    in_window = UsageEvent.created_at >= start

    def cost_since(since: datetime) -> ColumnElement[int]:
        return func.sum(case((UsageEvent.created_at >= since, UsageEvent.cost_micros), else_=0))

    query = select(
        func.sum(case((in_window, UsageEvent.images), else_=0)).label("images"),
        func.sum(case((in_window & (UsageEvent.kind == PREDICTION), 1), else_=0)).label(
            "predictions"
        ),
        cost_since(start).label("window"),
        cost_since(today).label("today"),
        cost_since(month).label("month"),
    ).where(UsageEvent.created_at >= min(start, month), UsageEvent.created_at <= end)
    row = session.execute(query).one()
    return {name: int(value or 0) for name, value in row._mapping.items()}
