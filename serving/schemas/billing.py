"""Bodies of the billing routes: credits, spend caps, usage and invoices."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from goshen.db.models import InvoiceStatus, LedgerEntryKind
from goshen.text import ONE_LINE
from serving.schemas import PublicBody, RequestBody

MAX_CREDIT_MICROS = 10**15  # a billion credits
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500), ONE_LINE]


class CreditCreate(RequestBody):
    """POST /v1/admin/users/{id}/credits: a grant (credit added, optionally expiring) or an
    adjustment (a signed correction, with its reason)."""

    kind: Literal["grant", "adjustment"]
    amount_micros: int = Field(
        strict=True,
        ge=-MAX_CREDIT_MICROS,
        le=MAX_CREDIT_MICROS,
        description="micro-credits (1 credit = 1,000,000): positive for a grant; an adjustment's "
        "sign says which way it corrects",
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="grants only: what is left of it stops counting then"
    )
    reason: Reason = Field(default="", description="why; required for an adjustment")

    @model_validator(mode="after")
    def _consistent(self) -> CreditCreate:
        if self.kind == "grant" and self.amount_micros <= 0:
            raise ValueError("a grant adds credit: amount_micros must be positive")
        if self.kind == "adjustment":
            if self.amount_micros == 0:
                raise ValueError("an adjustment of 0 changes nothing: amount_micros must not be 0")
            if self.expires_at is not None:
                raise ValueError("only grants expire: leave expires_at out of an adjustment")
            if not self.reason:
                raise ValueError("an adjustment needs a reason")
        return self


class CreditEntryPublic(PublicBody):
    """A ledger entry: `amount_micros` moved the balance, `held_micros` the open holds."""

    id: str
    kind: LedgerEntryKind
    amount_micros: int
    held_micros: int
    job_id: str | None
    expires_at: datetime | None
    reason: str
    created_by: str | None
    created_at: datetime


class CreditBalancePublic(BaseModel):
    balance_micros: int = Field(description="the sum of the ledger's amounts")
    held_micros: int = Field(description="held by jobs that have not ended")
    available_micros: int = Field(description="the balance less what is held: what jobs may use")
    unmetered: bool = Field(description="never refused for want of credit (admins too)")


class InvoicePublic(BaseModel):
    """A user's statement for a UTC month; its files download by signed, expiring URL."""

    id: str
    user_id: str
    month: str = Field(description="the UTC month, `YYYY-MM`")
    status: InvoiceStatus = Field(
        description="`draft` until the grace period after the month, then `finalized` for good"
    )
    opening_balance_micros: int
    closing_balance_micros: int
    inference_micros: int = Field(description="generation and predictions, in micro-credits")
    training_micros: int
    storage_micros: int
    total_micros: int = Field(description="what the month cost: inference, training and storage")
    credits_added_micros: int = Field(description="grants and adjustments in the month")
    line_count: int
    html_url: str | None = Field(description="the rendered invoice; null until it is written")
    parquet_url: str | None = Field(description="its lines as Parquet; null until written")
    urls_expire_at: datetime = Field(description="when `html_url` and `parquet_url` stop working")
    created_at: datetime
    updated_at: datetime
    finalized_at: datetime | None
