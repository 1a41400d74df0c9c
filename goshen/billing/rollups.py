"""Usage rollups: a day's usage events per user, model, unit and kind, computed with DuckDB.

The events are read from the platform database with SQLAlchemy into Arrow (PostgreSQL and SQLite
alike: DuckDB's postgres scanner would need an extension download), rolled up by `rollup_usage`
(the one place that names the engine, so a benchmark's choice can swap it) and written as
Parquet whose bytes depend only on the events: rows sorted, no wall-clock inside.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from goshen.db.models import UsageEvent
from goshen.storage import artifact_key

EVENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("user_id", pa.string()),
        ("model_id", pa.string()),
        ("job_id", pa.string()),
        ("kind", pa.string()),
        ("unit", pa.string()),
        ("quantity", pa.float64()),
        ("cost_micros", pa.int64()),
        ("seconds", pa.float64()),
    ]
)
ROLLUP_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("model_id", pa.string()),
        ("unit", pa.string()),
        ("kind", pa.string()),
        ("quantity", pa.float64()),
        ("cost_micros", pa.int64()),
        ("event_count", pa.int64()),
        ("job_count", pa.int64()),
        ("p50_run_seconds", pa.float64()),
        ("p95_run_seconds", pa.float64()),
    ]
)
# Both quantiles in one call: one sort of each group's seconds (faster in bench/usage_rollup.py).
_ROLLUP_SQL = """
WITH grouped AS (
SELECT user_id, model_id, unit, kind,
       sum(quantity) AS quantity,
       CAST(sum(cost_micros) AS BIGINT) AS cost_micros,
       CAST(count(*) AS BIGINT) AS event_count,
       CAST(count(DISTINCT job_id) AS BIGINT) AS job_count,
       quantile_cont(seconds, [0.5, 0.95]) AS run_seconds_quantiles
FROM events
GROUP BY user_id, model_id, unit, kind
)
SELECT user_id, model_id, unit, kind, quantity, cost_micros, event_count, job_count,
       run_seconds_quantiles[1] AS p50_run_seconds,
       run_seconds_quantiles[2] AS p95_run_seconds
FROM grouped
ORDER BY user_id, model_id NULLS FIRST, unit, kind
"""


@dataclass(frozen=True)
class EventTotals:
    """What the usage events of a period add up to, counted by the database itself."""

    cost_micros: int
    event_count: int


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC day as [start, end)."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def usage_daily_key(day: date) -> str:
    """Where a day's rollup is kept in the artifact store."""
    return artifact_key("billing", "usage_daily", f"{day.isoformat()}.parquet")


def read_events(session: Session, start: datetime, end: datetime) -> pa.Table:
    """The usage events created in [start, end), in id order, as Arrow."""
    rows = session.execute(
        select(
            UsageEvent.id,
            UsageEvent.user_id,
            UsageEvent.model_id,
            # A generation job or a training job (their ids never collide: job_, trn_).
            func.coalesce(UsageEvent.job_id, UsageEvent.training_job_id),
            UsageEvent.kind,
            UsageEvent.unit,
            UsageEvent.quantity,
            UsageEvent.cost_micros,
            UsageEvent.seconds,
        )
        .where(UsageEvent.created_at >= start, UsageEvent.created_at < end)
        .order_by(UsageEvent.id)
    ).all()
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(EVENT_SCHEMA)
    arrays = {
        field.name: [str(v) if field.name == "unit" else v for v in values]
        for field, values in zip(EVENT_SCHEMA, columns, strict=True)
    }
    return pa.Table.from_pydict(arrays, schema=EVENT_SCHEMA)


def event_totals(session: Session, start: datetime, end: datetime) -> EventTotals:
    """The cost and number of the usage events created in [start, end), summed by SQL."""
    cost, count = session.execute(
        select(func.coalesce(func.sum(UsageEvent.cost_micros), 0), func.count()).where(
            UsageEvent.created_at >= start, UsageEvent.created_at < end
        )
    ).one()
    return EventTotals(int(cost), int(count))


def rollup_usage(events: pa.Table) -> pa.Table:
    """Usage per user, model, unit and kind: quantity, cost, event and job counts, p50/p95 run
    seconds; sorted by those keys. The engine is DuckDB (the rollup benchmark's choice)."""
    import duckdb

    with duckdb.connect(":memory:") as connection:
        # One thread: sums of floats then add up in one order, so equal events give equal bytes.
        connection.execute("SET threads = 1")
        connection.register("events", events)
        result = connection.sql(_ROLLUP_SQL).to_arrow_table()
    return result.cast(ROLLUP_SCHEMA)


def rollup_totals(rollup: pa.Table) -> EventTotals:
    """What a rollup adds up to."""
    cost = sum(v for v in rollup.column("cost_micros").to_pylist() if v is not None)
    count = sum(v for v in rollup.column("event_count").to_pylist() if v is not None)
    return EventTotals(int(cost), int(count))


def top_models(rollup: pa.Table, limit: int = 5) -> list[dict[str, object]]:
    """The models that cost most in a rollup: model id, cost and events, most costly first."""
    by_model: dict[str, tuple[int, int]] = {}
    for row in rollup.to_pylist():
        model = row["model_id"] or "(no model)"
        cost, events = by_model.get(model, (0, 0))
        by_model[model] = (cost + row["cost_micros"], events + row["event_count"])
    ranked = sorted(by_model.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return [{"model_id": m, "cost_micros": c, "events": e} for m, (c, e) in ranked]


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as Parquet bytes that depend only on its content (pyarrow writes no time)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def read_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))
