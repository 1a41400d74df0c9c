"""Per-key monthly spend caps: what a key's requests spent this month and hold now.

A key may carry `monthly_spend_cap_micros`. Every ledger entry that names a key moves its row
for the current month (UTC) in `api_key_spend`, in the entry's transaction: captures and charges
add to `spent_micros`, holds, captures and releases move `held_micros`. A hold is checked
against the cap as spent this month plus everything the key holds now (holds placed last month
included), and a capture never exceeds its hold: a key never spends past its cap. Checks run
under the user's balance lock (goshen.billing.ledger.lock), so a key's concurrent holds see
each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from goshen.billing.money import credits
from goshen.db import access
from goshen.db.models import ApiKeySpend, LedgerEntryKind, utcnow
from goshen.errors import SpendCapExceededError

# Entries whose amount is spending: what a request or a period cost.
_SPENDING = (LedgerEntryKind.capture, LedgerEntryKind.charge)


@dataclass(frozen=True)
class KeySpend:
    """A key's spending, in micro-credits: captured this month, and held by it now."""

    spent_micros: int
    held_micros: int

    @property
    def committed_micros(self) -> int:
        return self.spent_micros + self.held_micros


def month_of(at: datetime) -> str:
    """The calendar month (UTC) an instant falls in, as `YYYY-MM`."""
    return f"{at.year:04d}-{at.month:02d}"


def move(
    session: Session,
    api_key_id: str,
    *,
    kind: LedgerEntryKind,
    amount_micros: int,
    held_micros: int,
    now: datetime | None = None,
) -> None:
    """Count a ledger entry of `api_key_id` (just written) in its month's row."""
    spent = -amount_micros if kind in _SPENDING else 0
    if spent == 0 and held_micros == 0:
        return
    month = month_of(now or utcnow())
    values = {"api_key_id": api_key_id, "month": month, "spent_micros": 0, "held_micros": 0}
    access.insert_once(session, ApiKeySpend, values, ("api_key_id", "month"))
    session.execute(
        update(ApiKeySpend)
        .where(ApiKeySpend.api_key_id == api_key_id, ApiKeySpend.month == month)
        .values(
            spent_micros=ApiKeySpend.spent_micros + spent,
            held_micros=ApiKeySpend.held_micros + held_micros,
        )
    )


def spend(session: Session, api_key_id: str, now: datetime | None = None) -> KeySpend:
    """What the key spent this month (UTC) and holds now."""
    month = month_of(now or utcnow())
    spent, held = session.execute(
        select(
            func.coalesce(func.sum(ApiKeySpend.spent_micros).filter(ApiKeySpend.month == month), 0),
            func.coalesce(func.sum(ApiKeySpend.held_micros), 0),
        ).where(ApiKeySpend.api_key_id == api_key_id)
    ).one()
    return KeySpend(int(spent), int(held))


def check(session: Session, api_key_id: str, *, cap_micros: int, amount_micros: int) -> None:
    """SpendCapExceededError when holding `amount_micros` more would take the key past its
    monthly cap. Call under the key's user's balance lock."""
    current = spend(session, api_key_id)
    if current.committed_micros + amount_micros <= cap_micros:
        return
    raise SpendCapExceededError(
        f"this request may cost {credits(amount_micros)} credits and API key {api_key_id} has "
        f"{credits(max(0, cap_micros - current.committed_micros))} left of its monthly spend cap "
        f"of {credits(cap_micros)} ({credits(current.spent_micros)} spent this month, "
        f"{credits(current.held_micros)} held by requests that have not ended); raise the cap "
        "with PATCH /v1/keys/{id}, use another key, or wait for next month",
        cap=cap_micros,
        spent=current.spent_micros,
        held=current.held_micros,
        required=amount_micros,
    )
