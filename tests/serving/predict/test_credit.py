"""/predict's credit in chunks (serving.predict.credit) against the real database: exactly as
many requests as credit allows, across two API processes; the ledger captures what was served and
sums to the balance; spend caps; admins and unmetered accounts; a dead process's chunks swept."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen.accounts import Principal
from goshen.billing import ledger
from goshen.db import session_scope
from goshen.db.models import (
    ApiKey,
    CreditBalance,
    CreditLedgerEntry,
    LedgerEntryKind,
    Model,
    PredictCreditChunk,
    Role,
    User,
    utcnow,
)
from goshen.errors import InsufficientCreditError, SpendCapExceededError
from serving.predict.credit import PredictCredit, release_stale_chunks, reservation
from tests.fixtures.accounts import create_account

PRICE = 1000  # catalog_model: 1,000 micro-credits per image (a row, for /predict)


def _principal(
    sessions: sessionmaker[Session],
    credits_micros: int,
    *,
    role: Role = Role.developer,
    cap: int | None = None,
) -> Principal:
    account = create_account(sessions, credits_micros, role, monthly_spend_cap_micros=cap)
    with sessions() as session:
        return Principal(
            session.get_one(User, account.user_id), session.get_one(ApiKey, account.key_id)
        )


def _serve(credit: PredictCredit, principal: Principal, model: Model, requests: int) -> int:
    """How many of `requests` one-row requests were admitted (and cost their reservation)."""
    served = 0

    async def run() -> None:
        nonlocal served
        for _ in range(requests):
            try:
                reserved = await credit.reserve(principal, model, 1)
            except InsufficientCreditError:
                continue
            credit.settle(principal, reserved, reserved)
            served += 1

    asyncio.run(run())
    return served


def _ledger(sessions: sessionmaker[Session], user_id: str) -> tuple[int, int, int]:
    """(balance, held, captured) from the ledger, checked against the cached sums."""
    entry = CreditLedgerEntry
    with sessions() as session:
        balance, held = session.execute(
            select(func.sum(entry.amount_micros), func.sum(entry.held_micros)).where(
                entry.user_id == user_id
            )
        ).one()
        captured = session.scalar(
            select(func.coalesce(func.sum(entry.amount_micros), 0)).where(
                entry.user_id == user_id, entry.kind == LedgerEntryKind.capture
            )
        )
        cached = session.get_one(CreditBalance, user_id)
    assert (cached.balance_micros, cached.held_micros) == (balance, held)
    return balance, held, -captured


def test_two_processes_serve_exactly_what_credit_pays_for(
    sessions: sessionmaker[Session], catalog_model: Model
) -> None:
    principal = _principal(sessions, credits_micros=10 * PRICE)
    first = PredictCredit(sessions, chunk_micros=1_000_000)
    second = PredictCredit(sessions, chunk_micros=1_000_000)
    served = 0
    for _ in range(8):  # the processes take turns, each holding chunks of its own
        served += _serve(first, principal, catalog_model, 3)
        served += _serve(second, principal, catalog_model, 3)
    assert served == 10
    first.stop()
    second.stop()
    assert _ledger(sessions, principal.user.id) == (0, 0, 10 * PRICE)


def test_a_chunk_is_at_most_a_quarter_of_available_credit(
    sessions: sessionmaker[Session], catalog_model: Model
) -> None:
    """So a second API process still finds credit while the first holds a chunk."""
    principal = _principal(sessions, credits_micros=100 * PRICE)
    credit = PredictCredit(sessions, chunk_micros=1_000_000)
    assert _serve(credit, principal, catalog_model, 1) == 1
    assert _ledger(sessions, principal.user.id)[1] == 25 * PRICE
    credit.stop()
    assert _ledger(sessions, principal.user.id) == (99 * PRICE, 0, PRICE)


def test_admins_and_unmetered_accounts_are_charged_but_never_refused(
    sessions: sessionmaker[Session], catalog_model: Model
) -> None:
    admin = _principal(sessions, credits_micros=0, role=Role.admin)
    credit = PredictCredit(sessions, chunk_micros=5 * PRICE)
    assert _serve(credit, admin, catalog_model, 12) == 12
    credit.stop()
    assert _ledger(sessions, admin.user.id) == (-12 * PRICE, 0, 12 * PRICE)


def test_a_key_past_its_spend_cap_is_refused_while_the_account_has_credit(
    sessions: sessionmaker[Session], catalog_model: Model
) -> None:
    capped = _principal(sessions, credits_micros=100 * PRICE, cap=3 * PRICE)
    credit = PredictCredit(sessions, chunk_micros=1_000_000)
    assert _serve(credit, capped, catalog_model, 3) == 3

    async def one_more() -> None:
        await credit.reserve(capped, catalog_model, 1)

    with pytest.raises(SpendCapExceededError):
        asyncio.run(one_more())
    credit.stop()
    assert _ledger(sessions, capped.user.id) == (97 * PRICE, 0, 3 * PRICE)


def test_what_a_request_costs_past_its_reservation_is_charged_on_the_next_chunk(
    sessions: sessionmaker[Session], catalog_model: Model
) -> None:
    """Second pricing reserves RESERVED_SECONDS; a longer request pays the rest later."""
    principal = _principal(sessions, credits_micros=100 * PRICE)
    credit = PredictCredit(sessions, chunk_micros=2 * PRICE)

    async def run() -> None:
        reserved = await credit.reserve(principal, catalog_model, 1)
        credit.settle(principal, reserved, 3 * PRICE)  # past the 2,000 chunk
        reserved = await credit.reserve(principal, catalog_model, 1)
        credit.settle(principal, reserved, reserved)

    asyncio.run(run())
    credit.stop()
    assert _ledger(sessions, principal.user.id) == (96 * PRICE, 0, 4 * PRICE)


def test_a_dead_processs_chunks_are_released_uncharged_by_a_sweep(
    sessions: sessionmaker[Session], catalog_model: Model
) -> None:
    principal = _principal(sessions, credits_micros=100 * PRICE)
    dead = PredictCredit(sessions, chunk_micros=1_000_000)
    assert _serve(dead, principal, catalog_model, 2) == 2  # never stopped: its chunk stays held
    assert release_stale_chunks(sessions, timedelta(minutes=10)) == 0  # not stale yet
    with session_scope(sessions) as session:
        session.execute(update(PredictCreditChunk).values(created_at=utcnow() - timedelta(days=30)))
    assert release_stale_chunks(sessions, timedelta(minutes=10)) == 1
    assert release_stale_chunks(sessions, timedelta(minutes=10)) == 0
    assert _ledger(sessions, principal.user.id) == (100 * PRICE, 0, 0)
    with sessions() as session:
        assert ledger.current(session, principal.user.id).available_micros == 100 * PRICE

    # Were the process alive after all, ending its chunk later moves no credit twice.
    dead.stop()
    assert _ledger(sessions, principal.user.id) == (100 * PRICE, 0, 0)


def test_reservations_follow_the_pricing_unit(catalog_model: Model) -> None:
    assert reservation(catalog_model, 3) == 3 * PRICE
