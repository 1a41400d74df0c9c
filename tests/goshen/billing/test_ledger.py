"""The credit ledger on both backends: holds refuse what is short, settle once, expiry, sums."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen import accounts
from goshen.billing import ledger
from goshen.billing.money import MICROS_PER_CREDIT, credits
from goshen.db import session_scope
from goshen.db.models import (
    CreditBalance,
    CreditLedgerEntry,
    Job,
    LedgerEntryKind,
    Model,
    Role,
    utcnow,
)
from goshen.errors import ConflictError, InsufficientCreditError
from tests.fixtures.accounts import Account

CREDIT = MICROS_PER_CREDIT


@pytest.fixture
def broke(sessions: sessionmaker[Session]) -> str:
    """A user with no credit at all."""
    with session_scope(sessions) as session:
        user = accounts.create_user(
            session, email="broke@example.com", role=Role.developer, credits_micros=0
        )
        return user.id


@pytest.fixture
def make_job(
    sessions: sessionmaker[Session], make_model: Callable[..., Model]
) -> Callable[[str], str]:
    model = make_model()

    def make(user_id: str) -> str:
        with session_scope(sessions) as session:
            job = Job(user_id=user_id, model_id=model.id, input={}, status="queued")
            session.add(job)
            session.flush()
            return job.id

    return make


def _sums(session: Session, user_id: str) -> tuple[int, int]:
    """(sum of amounts, sum of holds) straight from the ledger, checked against the cache."""
    total, held = session.execute(
        select(
            func.coalesce(func.sum(CreditLedgerEntry.amount_micros), 0),
            func.coalesce(func.sum(CreditLedgerEntry.held_micros), 0),
        ).where(CreditLedgerEntry.user_id == user_id)
    ).one()
    cached = session.get(CreditBalance, user_id, populate_existing=True)
    assert cached is not None and (cached.balance_micros, cached.held_micros) == (total, held)
    return total, held


def test_a_new_user_is_granted_new_user_credits_once(
    sessions: sessionmaker[Session], developer: Account
) -> None:
    with session_scope(sessions) as session:
        assert ledger.current(session, developer.user_id) == ledger.Balance(10 * CREDIT, 0)
        (entry,) = session.scalars(
            select(CreditLedgerEntry).where(CreditLedgerEntry.user_id == developer.user_id)
        )
        assert entry.kind == LedgerEntryKind.grant and entry.expires_at is None
        assert "GOSHEN_NEW_USER_CREDITS" in entry.reason
        assert _sums(session, developer.user_id) == (10 * CREDIT, 0)


def test_a_hold_past_available_credit_is_refused_with_the_amounts(
    sessions: sessionmaker[Session], broke: str, make_job: Callable[[str], str]
) -> None:
    first, second = make_job(broke), make_job(broke)
    with session_scope(sessions) as session:
        ledger.grant(session, user_id=broke, source="t:1", amount_micros=5 * CREDIT)
        ledger.hold(
            session, user_id=broke, job_id=first, amount_micros=3 * CREDIT, refuse_short=True
        )
    with session_scope(sessions) as session, pytest.raises(InsufficientCreditError) as refused:
        ledger.hold(
            session, user_id=broke, job_id=second, amount_micros=3 * CREDIT, refuse_short=True
        )
    assert refused.value.members() == {
        "balance": 5 * CREDIT,
        "available": 2 * CREDIT,
        "required": 3 * CREDIT,
    }
    with session_scope(sessions) as session:
        # An admin's or unmetered account's hold goes through, and may leave a debt.
        ledger.hold(
            session, user_id=broke, job_id=second, amount_micros=3 * CREDIT, refuse_short=False
        )
        assert ledger.current(session, broke).available_micros == -1 * CREDIT


def test_settling_captures_the_cost_and_releases_the_rest_once(
    sessions: sessionmaker[Session], broke: str, make_job: Callable[[str], str]
) -> None:
    succeeded, canceled, greedy = make_job(broke), make_job(broke), make_job(broke)
    with session_scope(sessions) as session:
        ledger.grant(session, user_id=broke, source="t:1", amount_micros=10 * CREDIT)
        for job_id in (succeeded, canceled, greedy):
            ledger.hold(
                session, user_id=broke, job_id=job_id, amount_micros=2 * CREDIT, refuse_short=True
            )
        assert _sums(session, broke) == (10 * CREDIT, 6 * CREDIT)
    for _ in range(2):  # a job that ends twice moves credit once
        with session_scope(sessions) as session:
            ledger.settle(session, user_id=broke, job_id=succeeded, cost_micros=CREDIT // 2)
            ledger.settle(session, user_id=broke, job_id=canceled, cost_micros=0)
            # Never more than the hold.
            ledger.settle(session, user_id=broke, job_id=greedy, cost_micros=5 * CREDIT)
    with session_scope(sessions) as session:
        assert _sums(session, broke) == (10 * CREDIT - CREDIT // 2 - 2 * CREDIT, 0)
        kinds = session.execute(
            select(CreditLedgerEntry.job_id, CreditLedgerEntry.kind, CreditLedgerEntry.held_micros)
            .where(CreditLedgerEntry.job_id.is_not(None))
            .order_by(CreditLedgerEntry.id)
        ).all()
    assert sorted((job, kind, held) for job, kind, held in kinds) == sorted(
        [
            (succeeded, "hold", 2 * CREDIT),
            (succeeded, "capture", -CREDIT // 2),
            (succeeded, "release", -3 * CREDIT // 2),
            (canceled, "hold", 2 * CREDIT),
            (canceled, "release", -2 * CREDIT),
            (greedy, "hold", 2 * CREDIT),
            (greedy, "capture", -2 * CREDIT),
        ]
    )


def test_a_job_without_a_hold_settles_to_nothing(
    sessions: sessionmaker[Session], broke: str, make_job: Callable[[str], str]
) -> None:
    with session_scope(sessions) as session:
        assert ledger.settle(session, user_id=broke, job_id=make_job(broke), cost_micros=5) == 0
        assert ledger.current(session, broke) == ledger.Balance(0, 0)


def test_an_expired_grant_stops_counting_and_is_written_off_once(
    sessions: sessionmaker[Session], broke: str, make_job: Callable[[str], str]
) -> None:
    job_id = make_job(broke)
    soon = utcnow() + timedelta(seconds=0.5)
    with session_scope(sessions) as session:
        ledger.grant(session, user_id=broke, source="t:lasting", amount_micros=2 * CREDIT)
        ledger.grant(
            session, user_id=broke, source="t:promo", amount_micros=3 * CREDIT, expires_at=soon
        )
        ledger.hold(session, user_id=broke, job_id=job_id, amount_micros=CREDIT, refuse_short=True)
        # Spent from the promotion first: it expires soonest.
        ledger.settle(session, user_id=broke, job_id=job_id, cost_micros=CREDIT)
    later = soon + timedelta(seconds=1)
    with session_scope(sessions) as session:
        assert ledger.current(session, broke, later) == ledger.Balance(2 * CREDIT, 0)
        for _ in range(2):
            assert ledger.lock(session, broke, later) == ledger.Balance(2 * CREDIT, 0)
        written_off = session.scalars(
            select(CreditLedgerEntry).where(CreditLedgerEntry.source.like("expiry:%"))
        ).all()
        assert [(entry.kind, entry.amount_micros) for entry in written_off] == [
            ("adjustment", -2 * CREDIT)
        ]
        assert _sums(session, broke) == (2 * CREDIT, 0)


def test_an_adjustment_may_not_take_available_credit_below_zero(
    sessions: sessionmaker[Session], broke: str
) -> None:
    with session_scope(sessions) as session:
        ledger.grant(session, user_id=broke, source="t:1", amount_micros=CREDIT)
        entry, added = ledger.adjust(
            session,
            user_id=broke,
            source="t:2",
            amount_micros=-CREDIT // 4,
            reason="refund reversed",
            created_by=None,
        )
        assert added and entry.amount_micros == -CREDIT // 4
        with pytest.raises(ConflictError):
            ledger.adjust(
                session,
                user_id=broke,
                source="t:3",
                amount_micros=-CREDIT,
                reason="too much",
                created_by=None,
            )
        assert _sums(session, broke) == (3 * CREDIT // 4, 0)


def test_a_replayed_grant_returns_the_first_entry(
    sessions: sessionmaker[Session], broke: str
) -> None:
    with session_scope(sessions) as session:
        first, added = ledger.grant(session, user_id=broke, source="t:1", amount_micros=CREDIT)
        again, added_again = ledger.grant(
            session, user_id=broke, source="t:1", amount_micros=CREDIT
        )
        assert (added, added_again, again.id) == (True, False, first.id)
        assert _sums(session, broke) == (CREDIT, 0)


def test_credits_reads_micro_credits_as_credits() -> None:
    assert [credits(m) for m in (0, 1, 1_500_000, -2_000_000)] == [
        "0",
        "0.000001",
        "1.5",
        "-2",
    ]


def test_a_job_ended_again_with_another_outcome_moves_no_more_credit(
    sessions: sessionmaker[Session], broke: str, make_job: Callable[[str], str]
) -> None:
    """Its hold ends once: a success whose cost was the whole hold, then an end without one;
    a cancel, then a success."""
    spent, canceled = make_job(broke), make_job(broke)
    with session_scope(sessions) as session:
        ledger.grant(session, user_id=broke, source="t:1", amount_micros=10 * CREDIT)
        for job_id in (spent, canceled):
            ledger.hold(
                session, user_id=broke, job_id=job_id, amount_micros=2 * CREDIT, refuse_short=True
            )
    with session_scope(sessions) as session:
        assert ledger.settle(session, user_id=broke, job_id=spent, cost_micros=2 * CREDIT)
        assert ledger.settle(session, user_id=broke, job_id=canceled, cost_micros=0) == 0
    with session_scope(sessions) as session:
        assert ledger.settle(session, user_id=broke, job_id=spent, cost_micros=0) == 0
        assert ledger.settle(session, user_id=broke, job_id=canceled, cost_micros=CREDIT) == 0
        assert _sums(session, broke) == (8 * CREDIT, 0)


def test_a_hold_across_its_grants_expiry_never_takes_the_balance_below_zero(
    sessions: sessionmaker[Session], broke: str, make_job: Callable[[str], str]
) -> None:
    """A job that held credit of a grant that then expired may still spend it: the write-off
    leaves what open holds reserve of it, whenever it is written."""
    captured, released = make_job(broke), make_job(broke)
    soon = utcnow() + timedelta(seconds=0.5)
    with session_scope(sessions) as session:
        ledger.grant(
            session, user_id=broke, source="t:promo", amount_micros=4 * CREDIT, expires_at=soon
        )
        for job_id in (captured, released):
            ledger.hold(
                session, user_id=broke, job_id=job_id, amount_micros=2 * CREDIT, refuse_short=True
            )
    time.sleep(max(0.0, (soon - utcnow()).total_seconds()) + 0.1)
    with session_scope(sessions) as session:
        ledger.settle(session, user_id=broke, job_id=captured, cost_micros=2 * CREDIT)
        ledger.settle(session, user_id=broke, job_id=released, cost_micros=0)
    with session_scope(sessions) as session:
        for _ in range(2):
            balance = ledger.lock(session, broke)
            assert balance.balance_micros >= 0 and balance.held_micros == 0
        assert _sums(session, broke)[0] == balance.balance_micros
        written_off = session.scalars(
            select(CreditLedgerEntry.amount_micros).where(CreditLedgerEntry.source.like("expiry:%"))
        ).all()
    assert written_off == [0]  # all of it was held when it expired: written off once, at 0
