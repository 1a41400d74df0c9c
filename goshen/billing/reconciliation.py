"""Ledger invariants the billing checks assert: the cached balances are the ledger's sums, and
no metered account is below zero."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from goshen.db.models import CreditBalance, CreditLedgerEntry, Role, User


@dataclass(frozen=True)
class Mismatch:
    """A user whose cached sums differ from their ledger's."""

    user_id: str
    ledger_balance_micros: int
    cached_balance_micros: int
    ledger_held_micros: int
    cached_held_micros: int


def balance_mismatches(session: Session) -> list[Mismatch]:
    """Users whose credit_balances row is not the sum of their ledger (amount or held)."""
    sums = {
        user_id: (int(amount), int(held))
        for user_id, amount, held in session.execute(
            select(
                CreditLedgerEntry.user_id,
                func.coalesce(func.sum(CreditLedgerEntry.amount_micros), 0),
                func.coalesce(func.sum(CreditLedgerEntry.held_micros), 0),
            ).group_by(CreditLedgerEntry.user_id)
        )
    }
    cached = {
        user_id: (amount, held)
        for user_id, amount, held in session.execute(
            select(CreditBalance.user_id, CreditBalance.balance_micros, CreditBalance.held_micros)
        )
    }
    mismatches = []
    for user_id in sorted(set(sums) | set(cached)):
        (amount, held), (cached_amount, cached_held) = (
            sums.get(user_id, (0, 0)),
            cached.get(user_id, (0, 0)),
        )
        if (amount, held) != (cached_amount, cached_held):
            mismatches.append(Mismatch(user_id, amount, cached_amount, held, cached_held))
    return mismatches


def negative_balances(session: Session) -> dict[str, int]:
    """Metered, non-admin users whose balance is below zero, with that balance."""
    rows = session.execute(
        select(CreditBalance.user_id, CreditBalance.balance_micros)
        .join(User, User.id == CreditBalance.user_id)
        .where(
            CreditBalance.balance_micros < 0,
            User.role != Role.admin,
            User.unmetered.is_(False),
        )
        .order_by(CreditBalance.user_id)
    )
    return {user_id: int(balance) for user_id, balance in rows}
