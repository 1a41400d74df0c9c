"""Monthly invoices: their lines, totals, status and rendering, free of any database or store.

A line's `amount_micros` is what it charges for the charge categories (inference, training,
storage; the invoice's total is their sum) and what it adds to the balance for the credit ones
(grant, adjustment: signed). An `unpaid` line is informational: the part of the month's storage
that the balance could not cover when the invoice was finalized (a charge never takes a metered
account below zero), still counted in the total.
"""

from __future__ import annotations

import calendar
import html
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa

from goshen.billing.money import credits
from goshen.billing.storage_usage import BYTES_PER_GB
from goshen.db.models import InvoiceStatus
from goshen.storage import artifact_key

CHARGE_CATEGORIES = ("inference", "training", "storage")
CREDIT_CATEGORIES = ("grant", "adjustment")
TRAINING_KINDS = frozenset({"training"})
LINES_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("month", pa.string()),
        ("line", pa.int64()),
        ("category", pa.string()),
        ("description", pa.string()),
        ("model_id", pa.string()),
        ("unit", pa.string()),
        ("quantity", pa.float64()),
        ("amount_micros", pa.int64()),
    ]
)


@dataclass(frozen=True)
class InvoiceLine:
    category: str
    description: str
    amount_micros: int
    quantity: float = 0.0
    unit: str = ""
    model_id: str | None = None


@dataclass(frozen=True)
class Statement:
    """A user's invoice for a month, as the invoices asset renders and records it."""

    user_id: str
    user_label: str
    month: str
    status: InvoiceStatus
    opening_balance_micros: int
    closing_balance_micros: int
    lines: list[InvoiceLine] = field(default_factory=list)

    def _sum(self, *categories: str) -> int:
        return sum(line.amount_micros for line in self.lines if line.category in categories)

    @property
    def inference_micros(self) -> int:
        return self._sum("inference")

    @property
    def training_micros(self) -> int:
        return self._sum("training")

    @property
    def storage_micros(self) -> int:
        return self._sum("storage")

    @property
    def total_micros(self) -> int:
        return self._sum(*CHARGE_CATEGORIES)

    @property
    def credits_added_micros(self) -> int:
        return self._sum("grant")

    @property
    def unpaid_micros(self) -> int:
        return self._sum("unpaid")


def parse_month(month: str) -> date:
    """The first day of a `YYYY-MM` month."""
    return datetime.strptime(month, "%Y-%m").replace(day=1).date()


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The UTC month as [start, end)."""
    first = parse_month(month)
    days = calendar.monthrange(first.year, first.month)[1]
    start = datetime(first.year, first.month, 1, tzinfo=UTC)
    return start, start + timedelta(days=days)


def month_days(month: str) -> list[date]:
    first = parse_month(month)
    days = calendar.monthrange(first.year, first.month)[1]
    return [first + timedelta(days=n) for n in range(days)]


def invoice_status(month: str, now: datetime, grace_days: int) -> InvoiceStatus:
    """Draft until `grace_days` after the month ends, then finalized."""
    _, end = month_bounds(month)
    return (
        InvoiceStatus.finalized
        if now >= end + timedelta(days=grace_days)
        else (InvoiceStatus.draft)
    )


def invoice_keys(month: str, user_id: str) -> tuple[str, str]:
    """The artifact-store keys of a user's invoice for a month: (HTML, Parquet of lines)."""
    return (
        artifact_key("billing", "invoices", month, f"{user_id}.html"),
        artifact_key("billing", "invoices", month, f"{user_id}.parquet"),
    )


def usage_lines(rows: list[dict[str, Any]], model_names: dict[str, str]) -> list[InvoiceLine]:
    """A line per model and unit: inference (every kind but training), then training."""
    totals: dict[tuple[str, str | None, str], list[float]] = {}
    for row in rows:
        category = "training" if row["kind"] in TRAINING_KINDS else "inference"
        entry = totals.setdefault((category, row["model_id"], row["unit"]), [0.0, 0])
        entry[0] += row["quantity"] or 0.0
        entry[1] += row["cost_micros"] or 0
    lines = []
    order = sorted(totals, key=lambda k: (CHARGE_CATEGORIES.index(k[0]), k[1] or "", k[2]))
    for category, model_id, unit in order:
        quantity, cost = totals[(category, model_id, unit)]
        if model_id is None:  # training runs name no catalog model
            name = "training" if category == "training" else "no model"
        else:
            name = model_names.get(model_id, f"deleted model {model_id}")
        lines.append(
            InvoiceLine(
                category=category,
                description=f"{name}: {_quantity(quantity)} {unit}{'' if quantity == 1 else 's'}",
                amount_micros=int(cost),
                quantity=round(quantity, 9),
                unit=unit,
                model_id=model_id,
            )
        )
    return lines


def storage_lines(
    byte_days: dict[str, int], costs: dict[str, int], month: str
) -> list[InvoiceLine]:
    """A line per kind of storage: GB-months kept (average bytes over the month) and its cost."""
    days = len(month_days(month))
    lines = []
    for kind in sorted(costs):
        gb_months = byte_days.get(kind, 0) / (BYTES_PER_GB * days)
        lines.append(
            InvoiceLine(
                category="storage",
                description=f"storage, {kind}: {gb_months:.6f} GB-months",
                amount_micros=costs[kind],
                quantity=round(gb_months, 9),
                unit="GB-month",
            )
        )
    return lines


def ledger_lines(entries: list[dict[str, Any]]) -> list[InvoiceLine]:
    """A line per grant and adjustment of the month, in the order they were made."""
    return [
        InvoiceLine(
            category=str(entry["kind"]),
            description=entry["reason"] or str(entry["kind"]),
            amount_micros=int(entry["amount_micros"]),
        )
        for entry in entries
        if str(entry["kind"]) in CREDIT_CATEGORIES
    ]


def unpaid_line(unpaid_micros: int) -> list[InvoiceLine]:
    if unpaid_micros <= 0:
        return []
    return [
        InvoiceLine(
            category="unpaid",
            description="storage the balance could not cover when the invoice was finalized",
            amount_micros=unpaid_micros,
        )
    ]


def lines_table(statement: Statement) -> pa.Table:
    """The invoice's lines as a table, in their printed order."""
    columns: dict[str, list[object]] = {f.name: [] for f in LINES_SCHEMA}
    for number, line in enumerate(statement.lines, start=1):
        columns["user_id"].append(statement.user_id)
        columns["month"].append(statement.month)
        columns["line"].append(number)
        columns["category"].append(line.category)
        columns["description"].append(line.description)
        columns["model_id"].append(line.model_id)
        columns["unit"].append(line.unit)
        columns["quantity"].append(line.quantity)
        columns["amount_micros"].append(line.amount_micros)
    return pa.Table.from_pydict(columns, schema=LINES_SCHEMA)


def lines_total(lines: pa.Table) -> int:
    """The total of an invoice's stored lines: the sum of its charge lines."""
    return sum(
        amount
        for category, amount in zip(
            lines.column("category").to_pylist(),
            lines.column("amount_micros").to_pylist(),
            strict=True,
        )
        if category in CHARGE_CATEGORIES
    )


def render_html(statement: Statement) -> str:
    """A self-contained, human-readable HTML invoice; every value from the data is escaped."""
    e = html.escape
    rows = (
        "\n".join(
            f"<tr><td>{e(line.category)}</td><td>{e(line.description)}</td>"
            f'<td class="n">{e(credits(line.amount_micros))}</td></tr>'
            for line in statement.lines
        )
        or '<tr><td colspan="3">no usage, storage or credit this month</td></tr>'
    )
    summary = [
        ("Opening balance", statement.opening_balance_micros),
        ("Inference", statement.inference_micros),
        ("Training", statement.training_micros),
        ("Storage", statement.storage_micros),
        ("Total charges", statement.total_micros),
        ("Credits added", statement.credits_added_micros),
        ("Unpaid", statement.unpaid_micros),
        ("Closing balance", statement.closing_balance_micros),
    ]
    totals = "\n".join(
        f'<tr><th>{e(label)}</th><td class="n">{e(credits(amount))}</td></tr>'
        for label, amount in summary
    )
    title = f"Goshen invoice {statement.month}: {statement.user_label}"
    note = (
        "This invoice is a draft: usage recorded late still counts until it is finalized."
        if statement.status == InvoiceStatus.draft
        else "This invoice is final; corrections appear on a later invoice as adjustments."
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8" />
<title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border-bottom: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style>
</head>
<body>
<h1>Invoice {e(statement.month)}</h1>
<p>Account: {e(statement.user_label)} ({e(statement.user_id)})<br />
Status: <strong>{e(statement.status.value)}</strong><br />
Amounts in credits.</p>
<table>
<thead><tr><th>Category</th><th>Description</th><th>Amount</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<table>
{totals}
</table>
<p>{e(note)}</p>
</body>
</html>
"""


def _quantity(value: float) -> str:
    return f"{value:,.6f}".rstrip("0").rstrip(".")
