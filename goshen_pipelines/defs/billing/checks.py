"""Blocking checks on the invoices: each one's total is its lines', and the ledger behind them
is whole (balances are the ledger's sums; no metered account below zero)."""

import dagster as dg
from sqlalchemy import select

from goshen.billing.invoices import lines_total
from goshen.billing.reconciliation import balance_mismatches, negative_balances
from goshen.billing.rollups import read_parquet
from goshen.db.models import Invoice
from goshen_pipelines.defs.billing.assets import invoices, monthly_partitions
from goshen_pipelines.resources import ArtifactStorage, PlatformDatabase


@dg.asset_check(asset=invoices, blocking=True, partitions_def=monthly_partitions)
def invoice_totals_match_lines(
    context: dg.AssetCheckExecutionContext,
    platform_db: PlatformDatabase,
    artifact_store: ArtifactStorage,
) -> dg.AssetCheckResult:
    """Every invoice of the month totals the sum of its stored lines, and counts them."""
    month = context.partition_key[:7]
    with platform_db.reading() as session:
        rows = session.scalars(select(Invoice).where(Invoice.month == month)).all()
    wrong = {}
    for row in rows:
        if row.parquet_key is None:
            wrong[row.user_id] = "no lines stored"
            continue
        lines = read_parquet(artifact_store.store.get(row.parquet_key))
        if lines_total(lines) != row.total_micros or lines.num_rows != row.line_count:
            wrong[row.user_id] = f"row {row.total_micros}, lines {lines_total(lines)}"
    return dg.AssetCheckResult(passed=not wrong, metadata={"invoices": len(rows), "wrong": wrong})


@dg.asset_check(asset=invoices, blocking=True, partitions_def=monthly_partitions)
def ledger_matches_balances(platform_db: PlatformDatabase) -> dg.AssetCheckResult:
    """For every user, the ledger's amounts and holds sum to the cached balance row."""
    with platform_db.reading() as session:
        mismatches = balance_mismatches(session)
    return dg.AssetCheckResult(
        passed=not mismatches,
        metadata={"mismatches": [vars(m) for m in mismatches[:20]], "count": len(mismatches)},
    )


@dg.asset_check(asset=invoices, blocking=True, partitions_def=monthly_partitions)
def no_negative_balances(platform_db: PlatformDatabase) -> dg.AssetCheckResult:
    """No metered, non-admin account's balance is below zero."""
    with platform_db.reading() as session:
        negative = negative_balances(session)
    return dg.AssetCheckResult(
        passed=not negative, metadata={"negative": dict(list(negative.items())[:20])}
    )
