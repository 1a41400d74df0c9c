"""The consumption order: soonest expiry first, non-expiring credit last, debt paid first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from goshen.billing.consumption import Movement, expired_remainders

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def test_a_debit_takes_from_the_grant_that_expires_first() -> None:
    movements = [
        Movement("g1", at(0), 100, expires_at=at(30)),
        Movement("g2", at(1), 100, expires_at=at(10)),
        Movement("g3", at(2), 100),  # never expires: spent last
        Movement("c1", at(3), -150),
    ]
    assert expired_remainders(movements, at(5)) == {}
    # g2 (soonest) gave all it had, g1 the other 50; g3 is untouched.
    assert expired_remainders(movements, at(40)) == {"g1": 50}


def test_what_a_grant_had_left_at_its_expiry_is_not_spent_after_it() -> None:
    movements = [
        Movement("g1", at(0), 100, expires_at=at(10)),
        Movement("g2", at(0.5), 100),
        Movement("c1", at(1), -30),
        Movement("c2", at(20), -50),  # after g1's expiry: from g2 only
    ]
    assert expired_remainders(movements, at(30)) == {"g1": 70}


def test_debt_is_paid_by_the_next_credit_first() -> None:
    movements = [
        Movement("c1", at(0), -40),  # an unmetered account runs a debt
        Movement("g1", at(1), 100, expires_at=at(10)),
    ]
    assert expired_remainders(movements, at(11)) == {"g1": 60}


def test_a_write_off_entry_is_not_spent_twice() -> None:
    movements = [
        Movement("g1", at(0), 100, expires_at=at(10)),
        Movement("x1", at(12), -100, closes="g1"),
        Movement("g2", at(13), 50, expires_at=at(20)),
    ]
    # Were the write-off spent as a debit, it would take g2's 50 with it.
    assert expired_remainders(movements, at(21)) == {"g1": 100, "g2": 50}
