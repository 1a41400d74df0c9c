"""What the billing page shows, shaped from the API's answers: usage groups, storage and invoices
as rows for charts and tables."""

from __future__ import annotations

from datetime import date
from typing import Any

from dashboard.ui import MICROS, credits, human_bytes

Row = dict[str, Any]

COST = "cost (credits)"
# What each usage field is called in charts and tables.
USAGE_COLUMNS = {
    "cost_micros": COST,
    "images": "images",
    "requests": "predictions",
    "jobs": "jobs",
    "seconds": "compute seconds",
}
# The field that names a group, and its column, for each `group_by`.
GROUP_LABELS = {"day": ("day", "day"), "model": ("model", "model"), "user": ("email", "account")}
TOP_ACCOUNTS = 10


def month_start(today: date) -> date:
    return today.replace(day=1)


def usage_rows(groups: list[dict[str, Any]], group_by: str) -> list[Row]:
    """One row per group, in the API's order: its label (a day, a model's name, an account's
    email; an account's id too) and its sums, cost in credits."""
    field, label = GROUP_LABELS[group_by]
    rows = []
    for group in groups:
        row: Row = {label: _group_label(group, field)}
        if group_by == "user":
            row["user id"] = group.get("user_id")
        for key, column in USAGE_COLUMNS.items():
            row[column] = group[key] / MICROS if key == "cost_micros" else group[key]
        rows.append(row)
    return rows


def _group_label(group: dict[str, Any], field: str) -> str:
    if field == "day":
        return str(group["day"])
    if field == "model":
        return group.get("model") or f"(deleted) {group.get('model_id') or '—'}"
    return group.get("email") or group.get("user_id") or "—"


def top_accounts(users: list[Row], count: int = TOP_ACCOUNTS) -> list[Row]:
    """The `count` accounts that cost the most, highest first."""
    return sorted(users, key=lambda row: row[COST], reverse=True)[:count]


def totals(usage: dict[str, Any]) -> list[tuple[str, str]]:
    """The range's totals as (label, shown value) for metrics."""
    sums = usage["totals"]
    return [
        ("Cost (credits)", credits(sums["cost_micros"])),
        ("Images", f"{sums['images']:,}"),
        ("Predictions", f"{sums['requests']:,}"),
        ("Jobs", f"{sums['jobs']:,}"),
        ("Compute seconds", f"{sums['seconds']:,.1f}"),
    ]


def storage_rows(storage: dict[str, Any]) -> list[Row]:
    """One row per account: its email, id, total bytes and each kind's."""
    rows = []
    for user in storage["data"]:
        row: Row = {"account": user["email"], "user id": user["user_id"]}
        row["stored"] = human_bytes(user["bytes"])
        for kind in user["kinds"]:
            row[kind["kind"]] = f"{human_bytes(kind['bytes'])} in {kind['objects']:,}"
        rows.append(row)
    return rows


def invoice_rows(invoices: list[dict[str, Any]]) -> list[Row]:
    """One row per invoice: month, account, status, totals in credits and its download links
    (empty until the invoice's files are written)."""
    return [
        {
            "month": invoice["month"],
            "user id": invoice["user_id"],
            "status": invoice["status"],
            "total": credits(invoice["total_micros"]),
            "inference": credits(invoice["inference_micros"]),
            "training": credits(invoice["training_micros"]),
            "storage": credits(invoice["storage_micros"]),
            "credits added": credits(invoice["credits_added_micros"]),
            "closing balance": credits(invoice["closing_balance_micros"]),
            "HTML": invoice["html_url"],
            "Parquet": invoice["parquet_url"],
            "id": invoice["id"],
        }
        for invoice in invoices
    ]
