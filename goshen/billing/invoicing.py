"""Issuing a month's invoices: what they read (usage, storage snapshots, the ledger), the storage
charge written when one is finalized, and the `invoices` row kept per user and month.

A ledger entry belongs to the month it was made in, except a storage charge, which belongs to the
month its source names (`storage:<user id>:<YYYY-MM>`): it is written when that month's invoice
is finalized, days after the month ended. A month's opening balance is the sum of the entries of
the months before it; its closing balance adds its own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from goshen.billing import ledger
from goshen.billing.invoices import (
    InvoiceLine,
    Statement,
    ledger_lines,
    month_bounds,
    storage_lines,
    unpaid_line,
    usage_lines,
)
from goshen.billing.rollups import read_events, rollup_usage
from goshen.db.models import (
    CreditLedgerEntry,
    Invoice,
    InvoiceStatus,
    LedgerEntryKind,
    Model,
    Role,
    User,
)

STORAGE_SOURCE = "storage:"


def storage_source(user_id: str, month: str) -> str:
    return f"{STORAGE_SOURCE}{user_id}:{month}"


@dataclass
class MonthActivity:
    """Everything a month's invoices are made of, per user."""

    month: str
    usage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    byte_days: dict[str, dict[str, int]] = field(default_factory=dict)
    storage_costs: dict[str, dict[str, int]] = field(default_factory=dict)
    opening: dict[str, int] = field(default_factory=dict)
    entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def users(self) -> list[str]:
        """Users with usage, storage or ledger entries in the month, or a balance coming in."""
        active = set(self.usage) | set(self.storage_costs) | set(self.entries)
        return sorted(active | {user for user, amount in self.opening.items() if amount})


def entry_month(source: str, created_at: datetime) -> str:
    if source.startswith(STORAGE_SOURCE):
        return source.rsplit(":", 1)[1]
    return created_at.strftime("%Y-%m")


def read_month(session: Session, month: str, storage_days: list[pa.Table]) -> MonthActivity:
    """The month's usage events (rolled up), its storage snapshots and the ledger around it."""
    start, end = month_bounds(month)
    activity = MonthActivity(month)
    for row in rollup_usage(read_events(session, start, end)).to_pylist():
        activity.usage.setdefault(row["user_id"], []).append(row)
    for row in _storage_month(storage_days):
        user_days = activity.byte_days.setdefault(row["user_id"], defaultdict(int))
        user_costs = activity.storage_costs.setdefault(row["user_id"], defaultdict(int))
        user_days[row["kind"]] += row["bytes"]
        user_costs[row["kind"]] += row["cost_micros"]
    rows = session.execute(
        select(
            CreditLedgerEntry.user_id,
            CreditLedgerEntry.kind,
            CreditLedgerEntry.amount_micros,
            CreditLedgerEntry.reason,
            CreditLedgerEntry.source,
            CreditLedgerEntry.created_at,
        )
        .where(
            or_(
                CreditLedgerEntry.created_at < end,
                CreditLedgerEntry.source.startswith(STORAGE_SOURCE),
            )
        )
        .order_by(CreditLedgerEntry.created_at, CreditLedgerEntry.id)
    ).all()
    for user_id, kind, amount, reason, source, created_at in rows:
        belongs = entry_month(source, created_at)
        if belongs < month:
            activity.opening[user_id] = activity.opening.get(user_id, 0) + amount
        elif belongs == month:
            activity.entries.setdefault(user_id, []).append(
                {"kind": kind, "amount_micros": amount, "reason": reason, "source": source}
            )
    return activity


def _storage_month(storage_days: list[pa.Table]) -> list[dict[str, Any]]:
    """The month's daily snapshots summed per user and kind, with Polars: byte-days (bytes
    kept, summed over the days) and what they cost."""
    if not storage_days:
        return []
    month = (
        pl.concat([pl.DataFrame(day) for day in storage_days], how="vertical_relaxed")
        .group_by("user_id", "kind")
        .agg(pl.col("bytes").sum(), pl.col("cost_micros").sum())
        .sort("user_id", "kind")
    )
    return month.to_dicts()


def finalized_users(session: Session, month: str) -> set[str]:
    query = select(Invoice.user_id).where(
        Invoice.month == month, Invoice.status == InvoiceStatus.finalized
    )
    return set(session.scalars(query))


def model_names(session: Session) -> dict[str, str]:
    return dict(session.execute(select(Model.id, Model.name)).tuples().all())


def statement_for(
    session: Session,
    activity: MonthActivity,
    user_id: str,
    status: InvoiceStatus,
    names: dict[str, str],
    *,
    charge_storage: bool = True,
) -> Statement:
    """The user's invoice; finalizing it first charges the month's storage to the ledger, once,
    never below zero for a metered account (the rest is shown unpaid), unless `charge_storage`
    is off (GOSHEN_BILLING_ENABLED=false). Call it in the transaction that records the row."""
    user = session.get(User, user_id)
    label = (user.name or user.email) if user is not None else user_id
    month = activity.month
    entries = list(activity.entries.get(user_id, []))
    storage = storage_lines(
        activity.byte_days.get(user_id, {}), activity.storage_costs.get(user_id, {}), month
    )
    unpaid: list[InvoiceLine] = []
    if status == InvoiceStatus.finalized and charge_storage:
        owed = sum(line.amount_micros for line in storage)
        charged = _charge_storage(session, user, user_id, month, owed)
        source = storage_source(user_id, month)
        if charged and all(e["source"] != source for e in entries):
            entries.append({"kind": LedgerEntryKind.charge, "amount_micros": -charged})
        unpaid = unpaid_line(owed - charged)
    opening = activity.opening.get(user_id, 0)
    closing = opening + sum(int(e["amount_micros"]) for e in entries)
    lines = usage_lines(activity.usage.get(user_id, []), names) + storage
    lines += ledger_lines(entries) + unpaid
    return Statement(user_id, label, month, status, opening, closing, lines)


def record(
    session: Session, statement: Statement, html_key: str, parquet_key: str, now: datetime
) -> bool:
    """Insert or update the user's invoice row for the month; False when a finalized row was
    there (it never changes). Unchanged values write nothing."""
    # Locked: two runs of the same month (the schedule and a manual one) finalize it once;
    # were both to insert it, the second fails on (user, month) and its run is retried.
    row = session.scalar(
        select(Invoice)
        .where(Invoice.user_id == statement.user_id, Invoice.month == statement.month)
        .with_for_update()
    )
    if row is None:
        row = Invoice(user_id=statement.user_id, month=statement.month)
        session.add(row)
    elif row.status == InvoiceStatus.finalized:
        return False
    values: dict[str, object] = {
        "status": statement.status,
        "opening_balance_micros": statement.opening_balance_micros,
        "closing_balance_micros": statement.closing_balance_micros,
        "inference_micros": statement.inference_micros,
        "training_micros": statement.training_micros,
        "storage_micros": statement.storage_micros,
        "total_micros": statement.total_micros,
        "credits_added_micros": statement.credits_added_micros,
        "line_count": len(statement.lines),
        "html_key": html_key,
        "parquet_key": parquet_key,
    }
    if statement.status == InvoiceStatus.finalized:
        values["finalized_at"] = now
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
    return True


def _charge_storage(
    session: Session, user: User | None, user_id: str, month: str, owed: int
) -> int:
    """Charge the month's storage once (kind `charge`); what was charged."""
    if owed <= 0:
        return 0
    source = storage_source(user_id, month)
    earlier = ledger.entry(session, source, LedgerEntryKind.charge)
    if earlier is not None:
        return -earlier.amount_micros
    balance = ledger.lock(session, user_id)
    never_refused = user is not None and (user.role == Role.admin or user.unmetered)
    charged = owed if never_refused else max(0, min(owed, balance.available_micros))
    if charged:
        ledger.post(
            session,
            user_id=user_id,
            source=source,
            kind=LedgerEntryKind.charge,
            amount_micros=-charged,
            reason=f"storage {month}" + ("" if charged == owed else " (part; the rest unpaid)"),
        )
    return charged
