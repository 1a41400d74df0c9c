"""notebooks/usage_and_revenue.py runs headless on a seeded home (GOSHEN_HOME and
GOSHEN_DATABASE_URL point at it), shows what the seed implies, and stops when the rollups and
the finalized invoices disagree; usage that came after its day was rolled up is shown, not an
error."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import PricingUnit, UsageEvent, User
from tests.fixtures.billing_home import seed_billing_home, write_usage_daily
from tests.fixtures.notebooks import run_notebook, use_home

NOTEBOOK = "usage_and_revenue"


def test_the_notebook_shows_the_seeded_revenue(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = seed_billing_home(settings, sessions, monkeypatch)
    # Usage of today, which the billing_daily schedule rolls up tonight: not shown yet, no error.
    add_event(sessions, home.emails["bo"], datetime.now(UTC))

    defs = run_notebook(NOTEBOOK)

    top = defs["top_accounts"].to_dicts()
    assert [row["account"] for row in top] == [home.emails[n] for n in ("ada", "bo", "cy")]
    assert top[0]["total_micros"] == 8_000 + 100_006  # her images and her dataset
    month_over_month = defs["month_over_month"].to_dicts()
    assert [(r["month"], r["total_micros"]) for r in month_over_month] == [
        ("2025-02", 4_000),
        ("2025-03", 125_506),
    ]
    assert month_over_month[1]["change"] == pytest.approx(125_506 / 4_000 - 1)
    per_image = defs["cost_per_image"].to_dicts()
    assert [(r["month"], r["model"], r["images"]) for r in per_image] == [
        ("2025-02", "digits-diffusion", 4.0),
        ("2025-03", "digits-diffusion", 25.0),
    ]
    assert {r["credits_per_image"] for r in per_image} == {0.001}
    assert defs["late_usage"].is_empty()
    reconciliation = defs["reconciliation"].to_dicts()
    assert [(r["month"], r["invoiced_micros"], r["invoices"]) for r in reconciliation] == [
        ("2025-02", 4_000, 2),
        ("2025-03", 125_506, 3),
    ]


def test_the_notebook_stops_when_usage_came_after_the_invoice(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = seed_billing_home(settings, sessions, monkeypatch).emails["ada"]
    # An event of March 15 committed after that day was rolled up: shown as late, no error.
    add_event(sessions, ada, datetime(2025, 3, 15, 23, 59, tzinfo=UTC))

    late = run_notebook(NOTEBOOK)["late_usage"].to_dicts()

    assert [(r["day"], r["events_micros"] - r["rollup_micros"]) for r in late] == [
        (date(2025, 3, 15), 50)
    ]
    # The day rolled up again after March's invoices were finalized: the rollups no longer
    # match the invoices, and the notebook stops there.
    write_usage_daily(settings, sessions, date(2025, 3, 15))
    with pytest.raises(AssertionError, match="2025-03: the invoices total 125,506"):
        run_notebook(NOTEBOOK)


def test_the_notebook_runs_on_a_platform_with_nothing_billed_yet(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_home(settings, monkeypatch)

    defs = run_notebook(NOTEBOOK)

    assert defs["top_accounts"].is_empty() and defs["reconciliation"].is_empty()
    assert defs["revenue_micros"] == 0


def add_event(sessions: sessionmaker[Session], email: str, at: datetime) -> None:
    """A prediction's usage event for the account with `email`, made at `at`."""
    with session_scope(sessions) as session:
        session.add(
            UsageEvent(
                user_id=session.scalars(select(User.id).where(User.email == email)).one(),
                kind="prediction",
                quantity=1.0,
                unit=PricingUnit.request,
                cost_micros=50,
                created_at=at,
            )
        )
