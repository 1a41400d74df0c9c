"""The billing page against a real API: November's usage per day, model and account with the
top spender first, storage per account, invoices filtered with their download links, and a
range that ends before it starts shown as the API's problem."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, DatasetStatus, Invoice, InvoiceStatus, Model
from goshen.storage import artifact_key
from goshen.storage.configured import make_store
from tests.dashboard.conftest import Dashboard, rendered
from tests.fixtures.accounts import Account
from tests.fixtures.usage import add_usage_event

NOVEMBER_HTML = b"<html><body>November: 2.5 credits</body></html>"


def _in_range(app: AppTest, start: date, end: date) -> AppTest:
    app.date_input(key="billing.start").set_value(start)
    app.date_input(key="billing.end").set_value(end)
    app.run()
    assert not app.exception, [exception.value for exception in app.exception]
    return app


def _frame(app: AppTest, column: str) -> list[dict[str, object]]:
    """The rows of the first table that has `column`."""
    frame = next(frame.value for frame in app.dataframe if column in frame.value.columns)
    return frame.to_dict("records")


def test_novembers_usage_per_day_model_and_top_account(
    dashboard: Dashboard,
    developer: Account,
    make_account: Callable[..., Account],
    make_model: Callable[..., Model],
    sessions: sessionmaker[Session],
) -> None:
    big_spender, painter = make_account(), make_model()
    with session_scope(sessions) as session:
        for at, account, cost in (
            (datetime(2026, 11, 3, 9, tzinfo=UTC), developer, 1_500_000),
            (datetime(2026, 11, 3, 17, tzinfo=UTC), developer, 500_000),
            (datetime(2026, 11, 4, 8, tzinfo=UTC), big_spender, 7_250_000),
        ):
            add_usage_event(session, account, painter, at, cost, job=True, images=4)
    email = dashboard.api.admin_get_user(big_spender.user_id)["email"]

    app = _in_range(dashboard.open("billing"), date(2026, 11, 1), date(2026, 11, 30))

    assert not app.error
    shown = rendered(app)
    assert "Cost (credits): 9.25" in shown and "Images: 12" in shown
    days = _frame(app, "day")
    assert [(row["day"], row["cost (credits)"]) for row in days] == [
        ("2026-11-03", 2.0),
        ("2026-11-04", 7.25),
    ]
    assert [row["model"] for row in _frame(app, "model")] == [painter.name]
    accounts = _frame(app, "account")
    assert (accounts[0]["account"], accounts[0]["user id"]) == (email, big_spender.user_id)
    assert accounts[1]["user id"] == developer.user_id and accounts[1]["cost (credits)"] == 2.0


def test_invoices_filter_by_status_and_link_their_files_and_storage_per_account(
    dashboard: Dashboard, developer: Account, sessions: sessionmaker[Session]
) -> None:
    make_store(dashboard.settings).put(
        artifact_key("invoices", "2026-11", developer.user_id, "invoice.html"), NOVEMBER_HTML
    )
    with session_scope(sessions) as session:
        for month, status in (
            ("2026-10", InvoiceStatus.finalized),
            ("2026-11", InvoiceStatus.draft),
        ):
            folder = ("invoices", month, developer.user_id)
            session.add(
                Invoice(
                    user_id=developer.user_id,
                    month=month,
                    status=status,
                    opening_balance_micros=10_000_000,
                    closing_balance_micros=7_500_000,
                    inference_micros=2_500_000,
                    total_micros=2_500_000,
                    line_count=2,
                    html_key=artifact_key(*folder, "invoice.html"),
                    parquet_key=artifact_key(*folder, "lines.parquet"),
                )
            )
        session.add(
            Dataset(
                user_id=developer.user_id,
                name="digits",
                kind=DatasetKind.tabular,
                status=DatasetStatus.ready,
                storage_prefix="datasets/x",
                size_bytes=1_500_000,
            )
        )

    app = dashboard.open("billing")

    invoices = _frame(app, "Parquet")
    assert [(row["month"], row["status"], row["total"]) for row in invoices] == [
        ("2026-11", "draft", "2.5"),
        ("2026-10", "finalized", "2.5"),
    ]
    assert "invoice.html" in str(invoices[0]["HTML"]) and "lines.parquet" in str(
        invoices[0]["Parquet"]
    )
    assert dashboard.api.download(str(invoices[0]["HTML"])) == NOVEMBER_HTML
    storage = _frame(app, "stored")
    assert [(row["user id"], row["stored"]) for row in storage] == [(developer.user_id, "1.5 MB")]

    app.selectbox(key="billing.status").set_value("finalized").run()
    assert [row["month"] for row in _frame(app, "Parquet")] == ["2026-10"]
    app.text_input(key="billing.month").input("2026-13").run()
    assert "Listing invoices failed" in rendered(app) and "month" in rendered(app)


def test_a_range_that_ends_before_it_starts_shows_the_apis_problem(dashboard: Dashboard) -> None:
    app = _in_range(dashboard.open("billing"), date(2026, 11, 30), date(2026, 11, 1))

    errors = [str(error.value) for error in app.error]
    assert len(errors) == 1 and "Reading usage by day failed" in errors[0]
    assert "send an end after the start" in errors[0]
    assert "Invoices" in rendered(app)
