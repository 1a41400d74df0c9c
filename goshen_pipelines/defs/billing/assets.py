"""Billing: daily usage and storage rollups, and monthly invoices, in the artifact store.

`usage_daily` and its check read one snapshot of the platform database (read-only), so events
committed while it runs cannot make the check fail: the check is part of the asset. `invoices`
writes the only things billing writes to the database: the `invoices` rows and, once per month
and user, the storage charge of a finalized invoice.
"""

from datetime import date, datetime
from typing import Any

import dagster as dg
import pyarrow as pa

from goshen.billing import invoicing
from goshen.billing.invoices import (
    Statement,
    invoice_keys,
    invoice_status,
    lines_table,
    month_days,
    render_html,
)
from goshen.billing.rollups import (
    day_bounds,
    event_totals,
    parquet_bytes,
    read_events,
    read_parquet,
    rollup_totals,
    rollup_usage,
    top_models,
    usage_daily_key,
)
from goshen.billing.storage_usage import (
    ModelSizer,
    StoragePrices,
    snapshot_table,
    storage_daily_key,
    stored_on,
)
from goshen.config import load_settings
from goshen.db.models import InvoiceStatus, Model, utcnow
from goshen.storage import ArtifactStore
from goshen_pipelines.lib.model_sizes import registered_model_bytes
from goshen_pipelines.resources import ArtifactStorage, MLflowTracking, PlatformDatabase

START = "2025-01-01"
PARQUET = "application/vnd.apache.parquet"
# end_offset=1: today's day and this month are partitions too, so the UI shows them as they fill.
daily_partitions = dg.DailyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)
monthly_partitions = dg.MonthlyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)


@dg.asset(
    group_name="billing",
    kinds={"duckdb", "parquet"},
    partitions_def=daily_partitions,
    check_specs=[
        dg.AssetCheckSpec(
            "rollup_matches_events",
            asset="usage_daily",
            blocking=True,
            description="the stored rollup's cost and event count equal the day's usage events'",
        )
    ],
)
def usage_daily(
    context: dg.AssetExecutionContext,
    platform_db: PlatformDatabase,
    artifact_store: ArtifactStorage,
) -> dg.MaterializeResult:  # type: ignore[type-arg]  # dagster takes only the bare class on assets with checks
    """Usage per user, model, unit and kind for a UTC day: quantity, cost, event and job counts,
    p50/p95 run seconds, as Parquet at billing/usage_daily/<day>.parquet."""
    day = date.fromisoformat(context.partition_key)
    start, end = day_bounds(day)
    with platform_db.reading() as session:
        events = read_events(session, start, end)
        expected = event_totals(session, start, end)
    key = usage_daily_key(day)
    store = artifact_store.store
    _put_if_changed(store, key, parquet_bytes(rollup_usage(events)), PARQUET)
    stored = read_parquet(store.get(key))
    totals = rollup_totals(stored)
    return dg.MaterializeResult(
        metadata={
            "storage_key": key,
            "rows": stored.num_rows,
            "events": totals.event_count,
            "cost_micros": totals.cost_micros,
            "top_models": top_models(stored),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="rollup_matches_events",
                passed=totals == expected,
                metadata={
                    "rollup_cost_micros": totals.cost_micros,
                    "events_cost_micros": expected.cost_micros,
                    "rollup_events": totals.event_count,
                    "events": expected.event_count,
                },
            )
        ],
    )


@dg.asset(group_name="billing", kinds={"parquet"}, partitions_def=daily_partitions)
def storage_daily(
    context: dg.AssetExecutionContext,
    platform_db: PlatformDatabase,
    artifact_store: ArtifactStorage,
    mlflow: MLflowTracking,
) -> dg.MaterializeResult:  # type: ignore[type-arg]  # dagster's MaterializeResult is generic
    """Each user's stored bytes by kind (datasets, models, outputs) on a UTC day, priced per
    GB-month for that day, as Parquet at billing/storage_daily/<day>.parquet."""
    # `mlflow` points the process at the registry that models' sizes are read from.
    day = date.fromisoformat(context.partition_key)
    store = artifact_store.store
    table = _storage_snapshot(platform_db, store, day, registered_model_bytes)
    key = storage_daily_key(day)
    _put_if_changed(store, key, parquet_bytes(table), PARQUET)
    by_kind: dict[str, int] = {}
    for row in table.to_pylist():
        by_kind[row["kind"]] = by_kind.get(row["kind"], 0) + row["bytes"]
    return dg.MaterializeResult(
        metadata={
            "storage_key": key,
            "users": len(set(table.column("user_id").to_pylist())),
            "bytes_by_kind": by_kind,
            "cost_micros": sum(table.column("cost_micros").to_pylist()),
        }
    )


@dg.asset(
    group_name="billing",
    kinds={"duckdb", "polars", "parquet", "html"},
    partitions_def=monthly_partitions,
    deps=[dg.AssetDep("storage_daily"), dg.AssetDep("usage_daily")],
)
def invoices(
    context: dg.AssetExecutionContext,
    platform_db: PlatformDatabase,
    artifact_store: ArtifactStorage,
    mlflow: MLflowTracking,
) -> dg.MaterializeResult:  # type: ignore[type-arg]  # dagster's MaterializeResult is generic
    """Each user's invoice for a UTC month: lines for inference per model, training, storage,
    grants and adjustments, opening and closing balance; HTML and Parquet at
    billing/invoices/<month>/<user id>.{html,parquet}, and the `invoices` row. A draft until
    GOSHEN_INVOICE_GRACE_DAYS after the month, then finalized (storage charged once) for good."""
    # `mlflow` points the process at the registry, for storage snapshots taken here.
    month = context.partition_key[:7]
    now = utcnow()
    settings = load_settings()
    status = invoice_status(month, now, settings.invoice_grace_days)
    store = artifact_store.store
    snapshots, computed = _month_storage(platform_db, store, month, now.date())
    with platform_db.reading() as session:
        activity = invoicing.read_month(session, month, snapshots)
        names = invoicing.model_names(session)
        finalized = invoicing.finalized_users(session, month)
    issued: dict[str, Any] = {"draft": 0, "finalized": 0, "unchanged_finalized": len(finalized)}
    total = 0
    for user_id in activity.users():
        if user_id in finalized:
            continue
        statement = _issue(
            platform_db, store, activity, user_id, status, names, now, settings.billing_enabled
        )
        if statement is None:
            issued["unchanged_finalized"] += 1
            continue
        issued[statement.status.value] += 1
        total += statement.total_micros
    return dg.MaterializeResult(
        metadata={
            "status": status.value,
            "invoices": issued,
            "total_micros": total,
            "storage_days_snapshotted_now": computed,
        }
    )


def _issue(
    platform_db: PlatformDatabase,
    store: ArtifactStore,
    activity: invoicing.MonthActivity,
    user_id: str,
    status: InvoiceStatus,
    names: dict[str, str],
    now: datetime,
    charge_storage: bool,
) -> Statement | None:
    """Write a user's invoice (row, storage charge, files); None if it was finalized already.

    The row, the charge and the files stand or fall together: the files are written before the
    transaction commits, and never over a finalized invoice.
    """
    html_key, parquet_key = invoice_keys(activity.month, user_id)
    with platform_db.session() as session:
        statement = invoicing.statement_for(
            session, activity, user_id, status, names, charge_storage=charge_storage
        )
        if not invoicing.record(session, statement, html_key, parquet_key, now):
            return None
        _put_if_changed(store, parquet_key, parquet_bytes(lines_table(statement)), PARQUET)
        _put_if_changed(store, html_key, render_html(statement).encode(), "text/html")
    return statement


def _storage_snapshot(
    platform_db: PlatformDatabase, store: ArtifactStore, day: date, model_bytes: ModelSizer
) -> pa.Table:
    settings = load_settings()
    prices = StoragePrices(
        settings.storage_price_datasets_micros_per_gb_month,
        settings.storage_price_models_micros_per_gb_month,
    )
    with platform_db.reading() as session:
        stored = stored_on(session, store, day, model_bytes)
    return snapshot_table(day, stored, prices)


def _month_storage(
    platform_db: PlatformDatabase, store: ArtifactStore, month: str, today: date
) -> tuple[list[pa.Table], list[str]]:
    """The month's storage snapshots up to today: storage_daily's, or, for a day it has not
    materialized, one taken now (listed, so a gap in the schedule is visible, never free)."""
    tables, computed = [], []
    sizes: dict[tuple[str, str | None], int] = {}

    def model_bytes(model: Model) -> int:  # a model's size is read once per run
        key = (model.registered_model, model.live_version or model.pinned_version)
        if key not in sizes:
            sizes[key] = registered_model_bytes(model)
        return sizes[key]

    for day in month_days(month):
        if day > today:
            break
        key = storage_daily_key(day)
        if store.exists(key):
            tables.append(read_parquet(store.get(key)))
        else:
            tables.append(_storage_snapshot(platform_db, store, day, model_bytes))
            computed.append(day.isoformat())
    return tables, computed


def _put_if_changed(store: ArtifactStore, key: str, data: bytes, content_type: str) -> None:
    """Write unless the same bytes are there: a re-run over unchanged data leaves the object,
    its modification time included, as it was."""
    if store.exists(key) and store.get(key) == data:
        return
    store.put(key, data, content_type=content_type)
