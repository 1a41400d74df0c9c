"""Billing: metered usage and the credit ledger, in integer micro-credits."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from goshen.db.models.base import Base, created_at_column, enum_type, id_column, utcnow
from goshen.db.models.catalog import PricingUnit


class LedgerEntryKind(StrEnum):
    grant = "grant"
    hold = "hold"
    capture = "capture"
    release = "release"
    adjustment = "adjustment"
    charge = "charge"


class UsageEvent(Base):
    """Append-only metering: one row per (job, kind) or (training job, kind), or per
    synchronous request."""

    __tablename__ = "usage_events"
    __table_args__ = (
        UniqueConstraint("job_id", "kind"),
        UniqueConstraint("training_job_id", "kind"),
        Index("ix_usage_events_user_created", "user_id", "created_at"),
        # Rollups and admin usage read a range across every user.
        Index("ix_usage_events_created_at", "created_at"),
    )

    id: Mapped[str] = id_column("use")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    training_job_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[float] = mapped_column(Float)
    unit: Mapped[PricingUnit] = mapped_column(enum_type(PricingUnit))
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # What was consumed, whatever the pricing unit: images made and compute seconds.
    images: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = created_at_column()


class CreditLedgerEntry(Base):
    """Append-only credit ledger (goshen.billing.ledger writes it).

    Each entry moves two sums: `amount_micros` the balance, `held_micros` the open holds, so a
    user's balance is the sum of one and their open holds the sum of the other. What an entry is
    for is its `source` (`job:<id>`, `admin:<id>:<Idempotency-Key>`, `signup:<user id>`,
    `expiry:<entry id>`): unique with its kind, so a cause that runs twice moves credit once.
    """

    __tablename__ = "credit_ledger"
    __table_args__ = (
        UniqueConstraint("source", "kind"),
        Index("ix_credit_ledger_user_id", "user_id", "id"),
        Index("ix_credit_ledger_user_expires", "user_id", "expires_at"),
        Index("ix_credit_ledger_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = id_column("led")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(320))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    kind: Mapped[LedgerEntryKind] = mapped_column(enum_type(LedgerEntryKind))
    amount_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    held_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Grants only: from then on what is left of it stops counting.
    expires_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(String(500), default="")
    # The key whose request caused the entry (holds, captures, releases): its spend cap counts it.
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = created_at_column()


class CreditBalance(Base):
    """A user's ledger sums, updated in the transaction of every entry; its row is the lock
    that makes checking and holding credit one step."""

    __tablename__ = "credit_balances"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    balance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    held_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKeySpend(Base):
    """What a key's requests spent in a month (UTC, `YYYY-MM`) and what they hold, updated in
    the transaction of every ledger entry that names the key: its spend cap is checked against
    the month's `spent_micros` plus the `held_micros` of all its rows."""

    __tablename__ = "api_key_spend"

    api_key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    held_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class InvoiceStatus(StrEnum):
    draft = "draft"
    finalized = "finalized"


class Invoice(Base):
    """A user's statement for a month (UTC, `YYYY-MM`), written by the `invoices` asset: a draft
    until the grace period after the month ends, then finalized and never changed again."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("user_id", "month"),
        Index("ix_invoices_month", "month", "id"),
    )

    id: Mapped[str] = id_column("inv")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    month: Mapped[str] = mapped_column(String(7))
    status: Mapped[InvoiceStatus] = mapped_column(enum_type(InvoiceStatus))
    opening_balance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    closing_balance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the month cost (inference, training, storage), and the credit it added.
    inference_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    training_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    storage_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    total_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_added_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    line_count: Mapped[int] = mapped_column(Integer, default=0)
    # Artifact-store keys of the rendered invoice and its lines.
    html_key: Mapped[str | None] = mapped_column(String(500))
    parquet_key: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finalized_at: Mapped[datetime | None]


class PredictCreditChunk(Base):
    """A chunk of credit an API process holds for /predict (serving.predict.credit), from its
    hold to its end: what is here and old is what a process that died left held."""

    __tablename__ = "predict_credit_chunks"
    __table_args__ = (Index("ix_predict_credit_chunks_created_at", "created_at"),)

    # The hold's ledger source.
    source: Mapped[str] = mapped_column(String(320), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = created_at_column()
