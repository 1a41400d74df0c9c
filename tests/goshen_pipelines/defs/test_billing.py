"""The billing assets on seeded usage, ledger and storage, on SQLite and PostgreSQL: rollups and
invoices in the artifact store, checks passing, re-runs changing nothing, a late event changing
its day and its draft, and a finalized invoice (its storage charged once) never changing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen.billing import ledger
from goshen.billing.rollups import read_parquet
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import (
    CreditBalance,
    CreditLedgerEntry,
    Dataset,
    DatasetKind,
    DatasetStatus,
    Invoice,
    InvoiceStatus,
    LedgerEntryKind,
    Model,
    ModelKind,
    ModelRuntime,
    PricingUnit,
    UsageEvent,
)
from goshen.storage import ArtifactStore, make_store
from goshen_pipelines.defs.billing import checks, schedules
from goshen_pipelines.defs.billing.assets import invoices, storage_daily, usage_daily
from goshen_pipelines.resources import ArtifactStorage, MLflowTracking, PlatformDatabase
from tests.fixtures.accounts import Account

PAST_MONTH = "2025-03"
GB = 10**9
INVOICE_CHECKS = [
    checks.invoice_totals_match_lines,
    checks.ledger_matches_balances,
    checks.no_negative_balances,
]


@dataclass
class Billing:
    sessions: sessionmaker[Session]
    store: ArtifactStore
    resources: dict[str, object]
    model_id: str
    today: date

    @property
    def month(self) -> str:
        return self.today.strftime("%Y-%m")

    @property
    def first_day(self) -> date:
        return self.today.replace(day=1)

    def materialize(self, assets: list[object], partition: str) -> dg.ExecuteInProcessResult:
        result = dg.materialize(assets, partition_key=partition, resources=self.resources)  # type: ignore[arg-type]
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert all(e.passed for e in evaluations), evaluations
        return result

    def invoices(self, month: str) -> dg.ExecuteInProcessResult:
        result = self.materialize([invoices, *INVOICE_CHECKS], f"{month}-01")
        assert len(result.get_asset_check_evaluations()) == len(INVOICE_CHECKS)
        return result

    def usage(self, day: date) -> bytes:
        result = self.materialize([usage_daily], day.isoformat())
        assert len(result.get_asset_check_evaluations()) == 1
        return self.store.get(f"billing/usage_daily/{day.isoformat()}.parquet")

    def event(self, user_id: str, at: datetime, cost: int, seconds: float = 1.0) -> None:
        with session_scope(self.sessions) as session:
            session.add(
                UsageEvent(
                    user_id=user_id,
                    model_id=self.model_id,
                    kind="generation",
                    quantity=1.0,
                    unit=PricingUnit.image,
                    cost_micros=cost,
                    images=1,
                    seconds=seconds,
                    created_at=at,
                )
            )

    def invoice(self, user_id: str, month: str) -> Invoice:
        with self.sessions() as session:
            row = session.scalar(
                select(Invoice).where(Invoice.user_id == user_id, Invoice.month == month)
            )
            assert row is not None
            return row

    def files(self, month: str) -> dict[str, bytes]:
        return {i.key: self.store.get(i.key) for i in self.store.list(f"billing/invoices/{month}")}


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
def billing(
    settings: Settings,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Billing]:
    monkeypatch.setenv("GOSHEN_HOME", str(settings.home_dir))
    with session_scope(sessions) as session:
        model = Model(
            name="digits-diffusion",
            kind=ModelKind.diffusion,
            runtime=ModelRuntime.diffusers,
            registered_model="digits-diffusion",
            pricing_unit=PricingUnit.image,
            price_micros=1000,
        )
        session.add(model)
        session.flush()
        model_id = model.id
    yield Billing(
        sessions=sessions,
        store=make_store(settings),
        resources={
            "platform_db": PlatformDatabase(database_url=settings.resolved_database_url),
            "artifact_store": ArtifactStorage(),
            # No catalog model has an owner here, so the registry is never asked for sizes.
            "mlflow": MLflowTracking(tracking_uri=f"file://{tmp_path / 'mlruns'}"),
        },
        model_id=model_id,
        today=datetime.now(UTC).date(),
    )


def _dataset(billing: Billing, user_id: str, size_bytes: int, created: datetime) -> None:
    with session_scope(billing.sessions) as session:
        session.add(
            Dataset(
                user_id=user_id,
                name="photos",
                kind=DatasetKind.images,
                status=DatasetStatus.ready,
                storage_prefix=f"datasets/{user_id}/x",
                size_bytes=size_bytes,
                created_at=created,
            )
        )


def _grant_in(billing: Billing, user_id: str, month: str, micros: int) -> None:
    """A grant dated in `month`, as an admin's top-up made then would be."""
    source = f"test-grant:{user_id}:{month}"
    with session_scope(billing.sessions) as session:
        ledger.grant(session, user_id=user_id, source=source, amount_micros=micros, reason="top-up")
        session.execute(
            update(CreditLedgerEntry)
            .where(CreditLedgerEntry.source == source)
            .values(created_at=datetime.strptime(f"{month}-02", "%Y-%m-%d").replace(tzinfo=UTC))
        )


def _storage_charges(billing: Billing, user_id: str) -> list[int]:
    with billing.sessions() as session:
        query = select(CreditLedgerEntry.amount_micros).where(
            CreditLedgerEntry.user_id == user_id,
            CreditLedgerEntry.kind == LedgerEntryKind.charge,
        )
        return list(session.scalars(query))


def test_rollups_are_stored_and_rerun_over_unchanged_events_changes_nothing(
    billing: Billing, developer: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = billing.first_day
    billing.event(developer.user_id, _at(day, 0), cost=1_000, seconds=2.0)
    billing.event(developer.user_id, _at(day, 9), cost=3_000, seconds=4.0)
    billing.event(developer.user_id, _at(day, 0) - timedelta(seconds=1), cost=99)  # the day before

    first = billing.usage(day)
    rows = read_parquet(first).to_pylist()

    assert len(rows) == 1
    assert rows[0]["cost_micros"] == 4_000 and rows[0]["event_count"] == 2
    assert rows[0]["p50_run_seconds"] == pytest.approx(3.0)
    assert billing.usage(day) == first

    key = f"billing/storage_daily/{billing.today.isoformat()}.parquet"
    billing.materialize([storage_daily], billing.today.isoformat())
    empty = billing.store.get(key)
    _dataset(billing, developer.user_id, 2 * GB, _at(billing.today, 0))
    billing.store.put(f"outputs/{developer.user_id}/job_1/1/0.png", b"x" * 1000)
    with session_scope(billing.sessions) as session:
        session.execute(update(Model).values(owner_id=developer.user_id, live_version="1"))
    sized: list[str] = []

    def model_bytes(model: Model) -> int:
        sized.append(model.name)
        return 3 * GB

    monkeypatch.setattr("goshen_pipelines.defs.billing.assets.registered_model_bytes", model_bytes)
    billing.materialize([storage_daily], billing.today.isoformat())
    snapshot = read_parquet(billing.store.get(key)).to_pylist()

    assert read_parquet(empty).num_rows == 0
    assert sized == ["digits-diffusion"]
    assert [(r["kind"], r["bytes"]) for r in snapshot] == [
        ("datasets", 2 * GB),
        ("models", 3 * GB),
        ("outputs", 1000),
    ]
    assert [r["price_micros_per_gb_month"] for r in snapshot] == [100_000, 150_000, 100_000]
    # A day of 1,000 bytes rounds to nothing; a day of gigabytes does not.
    assert [r["cost_micros"] > 0 for r in snapshot] == [True, True, False]


def test_schedules_roll_up_yesterday_and_today_and_reissue_last_month_in_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOSHEN_INVOICE_GRACE_DAYS", "3")
    billing_defs = dg.Definitions(
        assets=[usage_daily, storage_daily, invoices],
        jobs=[schedules.billing_daily_job, schedules.invoices_job],
        schedules=[schedules.billing_daily_schedule, schedules.invoices_schedule],
        resources={
            "platform_db": PlatformDatabase(),
            "artifact_store": ArtifactStorage(),
            "mlflow": MLflowTracking(),
        },
    )
    repository = billing_defs.get_repository_def()

    def requests(schedule: dg.ScheduleDefinition, at: datetime) -> list[str | None]:
        context = dg.build_schedule_context(scheduled_execution_time=at, repository_def=repository)
        result = schedule.evaluate_tick(context)
        return [request.partition_key for request in result.run_requests or []]

    daily = schedules.billing_daily_schedule
    monthly = schedules.invoices_schedule

    assert requests(daily, datetime(2026, 3, 1, 0, 15, tzinfo=UTC)) == ["2026-02-28", "2026-03-01"]
    assert requests(monthly, datetime(2026, 3, 1, 0, 45, tzinfo=UTC)) == [
        "2026-02-01",
        "2026-03-01",
    ]
    # GOSHEN_INVOICE_GRACE_DAYS=3: finalized on the 4th, the last day last month is run.
    assert requests(monthly, datetime(2026, 3, 4, 0, 45, tzinfo=UTC))[0] == "2026-02-01"
    assert requests(monthly, datetime(2026, 3, 5, 0, 45, tzinfo=UTC)) == ["2026-03-01"]
    for schedule in (daily, monthly):
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_a_late_event_changes_its_day_and_its_draft_invoice(
    billing: Billing, developer: Account
) -> None:
    day, other = billing.first_day, billing.today
    billing.event(developer.user_id, _at(day, 1), cost=2_000)
    if other != day:
        billing.event(developer.user_id, _at(other, 0), cost=500)
    day_bytes, other_bytes = billing.usage(day), billing.usage(other)
    billing.invoices(billing.month)
    draft = billing.invoice(developer.user_id, billing.month)
    files = billing.files(billing.month)

    assert draft.status == InvoiceStatus.draft and draft.finalized_at is None
    assert draft.inference_micros == draft.total_micros == 2_000 + (500 if other != day else 0)
    assert draft.credits_added_micros == Settings(_env_file=None).new_user_credits_micros
    assert set(files) == {
        f"billing/invoices/{billing.month}/{developer.user_id}.html",
        f"billing/invoices/{billing.month}/{developer.user_id}.parquet",
    }
    assert (draft.html_key, draft.parquet_key) == tuple(sorted(files))
    assert "draft" in files[f"billing/invoices/{billing.month}/{developer.user_id}.html"].decode()

    billing.invoices(billing.month)

    assert billing.files(billing.month) == files
    assert billing.invoice(developer.user_id, billing.month).updated_at == draft.updated_at

    billing.event(developer.user_id, _at(day, 2), cost=700)  # arrives after the day was rolled up

    assert billing.usage(day) != day_bytes
    assert billing.usage(other) == other_bytes or other == day
    billing.invoices(billing.month)
    redrafted = billing.invoice(developer.user_id, billing.month)
    assert redrafted.total_micros == draft.total_micros + 700
    assert redrafted.status == InvoiceStatus.draft


def test_a_finalized_invoice_charges_storage_once_and_never_changes(
    billing: Billing, make_account: Callable[..., Account]
) -> None:
    covered, short = make_account(), make_account()
    march = date(2025, 3, 1)
    for account in (covered, short):
        _grant_in(billing, account.user_id, PAST_MONTH, 5_000_000)
        billing.event(account.user_id, _at(march, 10), cost=1_000)
    # 31 GB of datasets all March at 0.10 credits per GB-month: 3.1 credits; 310 GB: 31, more
    # than the 15 the short account has (5 granted in March, 10 on sign-up).
    _dataset(billing, covered.user_id, 31 * GB, datetime(2025, 2, 1, tzinfo=UTC))
    _dataset(billing, short.user_id, 310 * GB, datetime(2025, 2, 1, tzinfo=UTC))

    billing.invoices(PAST_MONTH)
    paid, unpaid = (
        billing.invoice(covered.user_id, PAST_MONTH),
        billing.invoice(short.user_id, PAST_MONTH),
    )
    files = billing.files(PAST_MONTH)

    assert paid.status == InvoiceStatus.finalized and paid.finalized_at is not None
    assert paid.storage_micros == 3_100_000 and paid.inference_micros == 1_000
    assert paid.total_micros == 3_101_000
    assert paid.opening_balance_micros == 0
    assert (
        paid.closing_balance_micros == 5_000_000 - 3_100_000
    )  # the capture-free event is usage only
    assert _storage_charges(billing, covered.user_id) == [-3_100_000]
    assert unpaid.storage_micros == 31_000_000
    assert _storage_charges(billing, short.user_id) == [-15_000_000]
    lines = read_parquet(files[unpaid.parquet_key or ""]).to_pylist()
    assert [line["amount_micros"] for line in lines if line["category"] == "unpaid"] == [16_000_000]
    with billing.sessions() as session:
        balance = session.get(CreditBalance, short.user_id)
        assert balance is not None and balance.balance_micros == 0

    billing.event(covered.user_id, _at(march, 11), cost=50_000)  # late, after finalizing
    billing.invoices(PAST_MONTH)

    assert billing.files(PAST_MONTH) == files
    again = billing.invoice(covered.user_id, PAST_MONTH)
    assert (again.total_micros, again.updated_at, again.finalized_at) == (
        paid.total_micros,
        paid.updated_at,
        paid.finalized_at,
    )
    assert _storage_charges(billing, covered.user_id) == [-3_100_000]
    assert _storage_charges(billing, short.user_id) == [-15_000_000]
    with billing.sessions() as session:
        invoices_count = session.scalar(select(func.count()).select_from(Invoice))
    assert invoices_count == 2
