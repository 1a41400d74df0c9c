"""Invoice lines, totals, status and rendering, without a database."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from goshen.billing.invoices import (
    Statement,
    invoice_status,
    ledger_lines,
    lines_table,
    lines_total,
    month_bounds,
    render_html,
    storage_lines,
    unpaid_line,
    usage_lines,
)
from goshen.db.models import InvoiceStatus

USAGE: list[dict[str, Any]] = [
    {
        "kind": "generation",
        "model_id": "mdl_1",
        "unit": "image",
        "quantity": 3.0,
        "cost_micros": 300,
    },
    {
        "kind": "prediction",
        "model_id": "mdl_1",
        "unit": "request",
        "quantity": 1.0,
        "cost_micros": 5,
    },
    {"kind": "training", "model_id": None, "unit": "second", "quantity": 60.0, "cost_micros": 6000},
]


def _statement(status: InvoiceStatus = InvoiceStatus.draft) -> Statement:
    lines = usage_lines(USAGE, {"mdl_1": "digits <b>&"})
    lines += storage_lines({"datasets": 31 * 10**9}, {"datasets": 3_000}, "2025-03")
    lines += ledger_lines(
        [
            {"kind": "grant", "amount_micros": 5_000_000, "reason": "top-up"},
            {"kind": "capture", "amount_micros": -300, "reason": ""},
            {"kind": "adjustment", "amount_micros": -1_000, "reason": "refund <script>"},
        ]
    )
    lines += unpaid_line(1_000)
    return Statement("usr_a", "Ada <admin>", "2025-03", status, 100, 4_998_800, lines)


def test_lines_by_category_and_the_total_is_the_charges() -> None:
    statement = _statement()

    assert [line.category for line in statement.lines] == [
        "inference",
        "inference",
        "training",
        "storage",
        "grant",
        "adjustment",
        "unpaid",
    ]
    assert statement.inference_micros == 305
    assert statement.training_micros == 6000
    assert statement.storage_micros == 3000
    assert statement.total_micros == 9305
    assert statement.credits_added_micros == 5_000_000
    assert statement.lines[3].quantity == 1.0  # 31 GB-days of a 31-day month
    assert statement.lines[2].description == "training: 60 seconds"
    assert statement.lines[0].description == "digits <b>&: 3 images"


def test_stored_lines_total_the_invoice() -> None:
    table = lines_table(_statement())

    assert table.num_rows == 7
    assert lines_total(table) == 9305
    assert table.column("line").to_pylist() == list(range(1, 8))


def test_draft_until_the_grace_period_after_the_month_ends() -> None:
    start, end = month_bounds("2025-12")

    assert (start, end) == (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    assert invoice_status("2025-12", datetime(2026, 1, 3, 23, tzinfo=UTC), 3) is InvoiceStatus.draft
    assert invoice_status("2025-12", datetime(2026, 1, 4, tzinfo=UTC), 3) is InvoiceStatus.finalized
    assert invoice_status("2025-12", datetime(2025, 12, 15, tzinfo=UTC), 0) is InvoiceStatus.draft


def test_html_is_well_formed_and_escapes_what_users_named() -> None:
    page = render_html(_statement(InvoiceStatus.finalized))

    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "digits &lt;b&gt;&amp;" in page and "Ada &lt;admin&gt;" in page
    assert "finalized" in page and "2025-03" in page
    # Well-formed: it parses as XML once the doctype is set aside.
    root = ET.fromstring(page.split("\n", 1)[1])  # noqa: S314  # our own page, not untrusted input
    assert len(root.findall(".//tbody/tr")) == 7


def test_an_empty_month_still_renders() -> None:
    page = render_html(Statement("usr_a", "a@example.com", "2025-03", InvoiceStatus.draft, 0, 0))

    assert "no usage, storage or credit this month" in page
