"""Which credit is spent first, and what an expiring grant has left when it expires.

Credit is consumed soonest expiry first: a debit (a capture, a charge, a negative adjustment)
takes from the grant that expires first, then the next, oldest first among equals; credit that
never expires (grants without an expiry, positive adjustments) goes last. What a grant has left
at its expiry stops counting from that moment. A debit beyond all credit is debt (only admins and
unmetered accounts run one), which the next credit pays first.

Plain functions over the ledger's movements, so the rule is the same wherever it is applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Movement:
    """A ledger entry that moved the balance."""

    entry_id: str
    at: datetime
    amount_micros: int
    expires_at: datetime | None = None
    # An entry that wrote off an expired grant (its id): the expiry itself is replayed instead.
    closes: str | None = None


@dataclass
class _Lot:
    entry_id: str
    left: int
    expires_at: datetime | None

    def order(self) -> tuple[bool, datetime | None, str]:
        return (self.expires_at is None, self.expires_at, self.entry_id)


def expired_remainders(movements: Iterable[Movement], now: datetime) -> dict[str, int]:
    """What each grant that expired by `now` had left at its expiry, by grant entry id (a grant
    spent whole before it is absent)."""
    lots: list[_Lot] = []
    expired: dict[str, int] = {}
    debt = 0

    def expire(until: datetime) -> None:
        for lot in [lot for lot in lots if lot.expires_at is not None and lot.expires_at <= until]:
            expired[lot.entry_id] = lot.left
            lots.remove(lot)

    for movement in sorted(movements, key=lambda m: (m.at, m.entry_id)):
        expire(movement.at)
        if movement.closes is not None:
            continue
        if movement.amount_micros > 0:
            repaid = min(debt, movement.amount_micros)
            debt -= repaid
            lots.append(
                _Lot(movement.entry_id, movement.amount_micros - repaid, movement.expires_at)
            )
            expire(movement.at)  # a grant that was already past its expiry counts for nothing
        elif movement.amount_micros < 0:
            debt += _consume(lots, -movement.amount_micros)
    expire(now)
    return expired


def _consume(lots: list[_Lot], amount: int) -> int:
    """Take `amount` from `lots`, soonest expiry first; what they could not cover."""
    for lot in sorted(lots, key=_Lot.order):
        taken = min(lot.left, amount)
        lot.left -= taken
        amount -= taken
        if amount == 0:
            break
    lots[:] = [lot for lot in lots if lot.left > 0]
    return amount
