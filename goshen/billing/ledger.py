"""The credit ledger's operations: grant, adjust, hold, capture and release.

Every entry goes through `post`, which writes it once per (source, kind) and, in the same
transaction, moves the user's cached sums (credit_balances): a job retried, a request replayed
or an asset re-run moves credit once. Balance is the sum of `amount_micros`; open holds the sum of
`held_micros`; available credit is the balance less open holds.

Checking and holding credit is one step: `lock` takes the user's balance row (FOR UPDATE on
PostgreSQL; SQLite's write transactions are serial already), so concurrent holds see each other.
Grants that expired are written off (goshen.billing.consumption) before credit is checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from goshen.billing import captures, spend_caps
from goshen.billing.consumption import Movement, expired_remainders
from goshen.billing.money import credits
from goshen.db import access
from goshen.db.models import CreditBalance, CreditLedgerEntry, LedgerEntryKind, utcnow
from goshen.errors import ConflictError, InsufficientCreditError

_EXPIRY = "expiry:"


@dataclass(frozen=True)
class Balance:
    """A user's ledger sums, in micro-credits."""

    balance_micros: int
    held_micros: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


def job_source(job_id: str) -> str:
    return f"job:{job_id}"


def post(
    session: Session,
    *,
    user_id: str,
    source: str,
    kind: LedgerEntryKind,
    amount_micros: int = 0,
    held_micros: int = 0,
    job_id: str | None = None,
    expires_at: datetime | None = None,
    reason: str = "",
    created_by: str | None = None,
    api_key_id: str | None = None,
) -> bool:
    """Append an entry unless one with its (source, kind) exists; True when it was added.
    An entry naming the key that caused it counts toward that key's spend (spend_caps)."""
    _ensure_balance_row(session, user_id)
    values = {
        "user_id": user_id,
        "source": source,
        "kind": kind,
        "amount_micros": amount_micros,
        "held_micros": held_micros,
        "job_id": job_id,
        "expires_at": expires_at,
        "reason": reason,
        "created_by": created_by,
        "api_key_id": api_key_id,
    }
    added = access.insert_once(session, CreditLedgerEntry, values, ("source", "kind"))
    if added:
        session.execute(
            update(CreditBalance)
            .where(CreditBalance.user_id == user_id)
            .values(
                balance_micros=CreditBalance.balance_micros + amount_micros,
                held_micros=CreditBalance.held_micros + held_micros,
                updated_at=utcnow(),
            )
        )
        if api_key_id is not None:
            spend_caps.move(
                session,
                api_key_id,
                kind=kind,
                amount_micros=amount_micros,
                held_micros=held_micros,
            )
    return added


def entry(session: Session, source: str, kind: LedgerEntryKind) -> CreditLedgerEntry | None:
    return session.scalar(
        select(CreditLedgerEntry).where(
            CreditLedgerEntry.source == source, CreditLedgerEntry.kind == kind
        )
    )


def lock(session: Session, user_id: str, now: datetime | None = None) -> Balance:
    """The user's sums, locked against other ledger writers until the transaction ends, with
    grants that expired by `now` written off first."""
    now = now or utcnow()
    _ensure_balance_row(session, user_id)
    locked = select(CreditBalance).where(CreditBalance.user_id == user_id).with_for_update()
    held = session.scalars(locked).one().held_micros
    for grant_id, left in _unwritten_expiries(session, user_id, now, held).items():
        post(
            session,
            user_id=user_id,
            source=f"{_EXPIRY}{grant_id}",
            kind=LedgerEntryKind.adjustment,
            amount_micros=-left,
            # Written even at 0 (all of it held by jobs then): the expiry is settled once.
            reason=f"grant {grant_id} expired with {credits(left)} credits left unheld",
        )
    row = session.scalars(locked.execution_options(populate_existing=True)).one()
    return Balance(row.balance_micros, row.held_micros)


def lock_balances(session: Session, user_ids: Iterable[str]) -> None:
    """Lock several users' balance rows at once, in one order (by user id) whoever asks: a
    transaction that ends jobs of several users (a worker's batch, recovery) takes them all
    first, so two such transactions never wait on each other's rows in a cycle."""
    ordered = sorted(set(user_ids))
    if not ordered:
        return
    for user_id in ordered:
        _ensure_balance_row(session, user_id)
    session.execute(
        select(CreditBalance.user_id)
        .where(CreditBalance.user_id.in_(ordered))
        .order_by(CreditBalance.user_id)
        .with_for_update()
    )


def current(session: Session, user_id: str, now: datetime | None = None) -> Balance:
    """The user's sums as of `now`, reading only: grants that expired but are not written off
    yet already count for nothing."""
    row = session.get(CreditBalance, user_id, populate_existing=True)
    if row is None:
        return Balance(0, 0)
    lapsed = sum(_unwritten_expiries(session, user_id, now or utcnow(), row.held_micros).values())
    return Balance(row.balance_micros - lapsed, row.held_micros)


def hold(
    session: Session,
    *,
    user_id: str,
    amount_micros: int,
    refuse_short: bool,
    job_id: str | None = None,
    source: str | None = None,
    api_key_id: str | None = None,
    spend_cap_micros: int | None = None,
) -> Balance:
    """Hold what a request may cost, for the job `job_id` or another `source` (a training job,
    a chunk of /predict credit). With `refuse_short`, InsufficientCreditError when available
    credit is short; SpendCapExceededError when the hold would take `api_key_id` past its
    `spend_cap_micros` (whoever the account is). The sums before the hold."""
    before = lock(session, user_id)
    if refuse_short and before.available_micros < amount_micros:
        raise InsufficientCreditError(
            f"this request may cost {credits(amount_micros)} credits and this account has "
            f"{credits(before.available_micros)} available (balance "
            f"{credits(before.balance_micros)}, {credits(before.held_micros)} held by requests "
            "that have not ended); ask an admin for credit, or wait for running jobs to end",
            balance=before.balance_micros,
            available=before.available_micros,
            required=amount_micros,
        )
    if api_key_id is not None and spend_cap_micros is not None:
        spend_caps.check(
            session, api_key_id, cap_micros=spend_cap_micros, amount_micros=amount_micros
        )
    post(
        session,
        user_id=user_id,
        source=_source(job_id, source),
        kind=LedgerEntryKind.hold,
        held_micros=amount_micros,
        job_id=job_id,
        api_key_id=api_key_id,
    )
    return before


def settle(
    session: Session,
    *,
    user_id: str,
    cost_micros: int,
    job_id: str | None = None,
    source: str | None = None,
) -> int:
    """End a hold: capture its cost (never more than the hold) and release the rest; a job
    that did not succeed costs 0. What was captured; 0 when there is no hold.

    Once only: a hold that already ended (a second end, whatever its outcome) moves no credit;
    the user's balance row is locked before the hold is read, so two concurrent ends (a worker
    and recovery, a /predict chunk's process and a sweep) see each other. Grants that expired
    while the hold was open are written off first, while the hold still reserves its part of
    them (see `lock`). The capture and release name the hold's key."""
    source = _source(job_id, source)
    lock(session, user_id)
    found = session.execute(
        select(CreditLedgerEntry.held_micros, CreditLedgerEntry.api_key_id).where(
            CreditLedgerEntry.source == source, CreditLedgerEntry.kind == LedgerEntryKind.hold
        )
    ).one_or_none()
    if found is None:
        return 0
    held, api_key_id = found
    ended = session.scalar(
        select(CreditLedgerEntry.id).where(
            CreditLedgerEntry.source == source,
            CreditLedgerEntry.kind.in_([LedgerEntryKind.capture, LedgerEntryKind.release]),
        )
    )
    if ended is not None:
        return 0
    captured = max(0, min(cost_micros, held))
    if captured:
        post(
            session,
            user_id=user_id,
            source=source,
            kind=LedgerEntryKind.capture,
            amount_micros=-captured,
            held_micros=-captured,
            job_id=job_id,
            api_key_id=api_key_id,
        )
        captures.noted(session, source, captured)  # counted in metrics once it commits
    if held > captured:
        post(
            session,
            user_id=user_id,
            source=source,
            kind=LedgerEntryKind.release,
            held_micros=captured - held,
            job_id=job_id,
            api_key_id=api_key_id,
        )
    return captured


def grant(
    session: Session,
    *,
    user_id: str,
    source: str,
    amount_micros: int,
    expires_at: datetime | None = None,
    reason: str = "",
    created_by: str | None = None,
) -> tuple[CreditLedgerEntry, bool]:
    """Add credit (a top-up or a promotion), spent until `expires_at` if given; the entry, and
    whether it is new (False: `source` granted before, and that entry is returned)."""
    added = post(
        session,
        user_id=user_id,
        source=source,
        kind=LedgerEntryKind.grant,
        amount_micros=amount_micros,
        expires_at=expires_at,
        reason=reason,
        created_by=created_by,
    )
    found = entry(session, source, LedgerEntryKind.grant)
    assert found is not None, "it was just written, or written before"
    return found, added


def adjust(
    session: Session,
    *,
    user_id: str,
    source: str,
    amount_micros: int,
    reason: str,
    created_by: str | None,
) -> tuple[CreditLedgerEntry, bool]:
    """Correct a balance by a signed amount; the entry, and whether it is new. A correction
    may not take available credit below zero (ConflictError)."""
    earlier = entry(session, source, LedgerEntryKind.adjustment)
    if earlier is not None:
        return earlier, False
    before = lock(session, user_id)
    if amount_micros < 0 and before.available_micros + amount_micros < 0:
        raise ConflictError(
            f"this adjustment would take available credit below zero: the account has "
            f"{credits(before.available_micros)} credits available"
        )
    post(
        session,
        user_id=user_id,
        source=source,
        kind=LedgerEntryKind.adjustment,
        amount_micros=amount_micros,
        reason=reason,
        created_by=created_by,
    )
    found = entry(session, source, LedgerEntryKind.adjustment)
    assert found is not None, "it was just written"
    return found, True


def _source(job_id: str | None, source: str | None) -> str:
    if source is not None:
        return source
    assert job_id is not None, "a hold is for a job or names its source"
    return job_source(job_id)


def _ensure_balance_row(session: Session, user_id: str) -> None:
    values = {"user_id": user_id, "balance_micros": 0, "held_micros": 0}
    access.insert_once(session, CreditBalance, values, ("user_id",))


def _unwritten_expiries(session: Session, user_id: str, now: datetime, held: int) -> dict[str, int]:
    """What to write off of each grant that expired by `now` and is not written off yet: what
    it had left then, less what open holds reserve of it (`held`, taken from the soonest
    expiring grants first, as it would be spent): a job holding credit when its grant expired
    may still spend it, so capturing it never takes a balance below zero."""
    of_user = CreditLedgerEntry.user_id == user_id
    due = session.scalars(
        select(CreditLedgerEntry.id)
        .where(
            of_user,
            CreditLedgerEntry.kind == LedgerEntryKind.grant,
            CreditLedgerEntry.expires_at <= now,
        )
        .order_by(CreditLedgerEntry.expires_at, CreditLedgerEntry.id)
    ).all()
    if not due:
        return {}
    written = set(
        session.scalars(
            select(CreditLedgerEntry.source).where(
                of_user,
                CreditLedgerEntry.kind == LedgerEntryKind.adjustment,
                CreditLedgerEntry.source.in_([f"{_EXPIRY}{grant_id}" for grant_id in due]),
            )
        )
    )
    unwritten = [grant_id for grant_id in due if f"{_EXPIRY}{grant_id}" not in written]
    if not unwritten:
        return {}
    rows = session.execute(
        select(
            CreditLedgerEntry.id,
            CreditLedgerEntry.created_at,
            CreditLedgerEntry.amount_micros,
            CreditLedgerEntry.expires_at,
            CreditLedgerEntry.source,
        ).where(of_user, CreditLedgerEntry.amount_micros != 0)
    ).all()
    movements = [
        Movement(
            entry_id,
            at,
            amount,
            expires_at,
            closes=source.removeprefix(_EXPIRY) if source.startswith(_EXPIRY) else None,
        )
        for entry_id, at, amount, expires_at, source in rows
    ]
    remainders = expired_remainders(movements, now)
    reserved = max(0, held)
    write_offs = {}
    for grant_id in unwritten:  # soonest expiry first
        left = remainders.get(grant_id, 0)
        kept = min(left, reserved)
        reserved -= kept
        write_offs[grant_id] = left - kept
    return write_offs
