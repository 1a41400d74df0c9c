"""What a Stripe event grants, decided from the event alone: exact micro-credits from a decimal
count, only for paid Checkout Sessions, one ledger source per session whichever event names it."""

from __future__ import annotations

from typing import Any

import pytest

from goshen.billing.topups import (
    MalformedEventError,
    Outcome,
    Receipt,
    TopUp,
    event_id,
    parse_credits,
    top_up_of,
)

USER = "usr_01JD0000000000000000000000"


def event(kind: str = "checkout.session.completed", **checkout: Any) -> dict[str, Any]:
    fields = {
        "id": "cs_test_a1",
        "object": "checkout.session",
        "payment_status": "paid",
        "metadata": {"goshen_user_id": USER, "goshen_credits": "25"},
        **checkout,
    }
    return {"id": "evt_1", "object": "event", "type": kind, "data": {"object": fields}}


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("25", 25_000_000),
        ("12.5", 12_500_000),
        ("0.000001", 1),
        ("0.1", 100_000),  # 0.1 is no binary float: exact only without floats
        ("1000000000", 10**15),
        ("007.250000", 7_250_000),
    ],
)
def test_credits_become_exact_micro_credits(text: str, micros: int) -> None:
    assert parse_credits(text) == micros


@pytest.mark.parametrize(
    "text",
    ["", "0", "0.0000001", "-1", "+1", "1e3", "NaN", "Infinity", " 1", "1,5", "1.", ".5", 25, None],
)
def test_anything_but_a_positive_decimal_with_6_places_is_refused(text: object) -> None:
    with pytest.raises(ValueError, match="goshen_credits"):
        parse_credits(text)


def test_more_than_a_billion_credits_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 1e9"):
        parse_credits("1000000000.000001")


@pytest.mark.parametrize(
    "kind", ["checkout.session.completed", "checkout.session.async_payment_succeeded"]
)
def test_both_events_of_a_paid_session_grant_under_the_sessions_source(kind: str) -> None:
    decided = top_up_of(event(kind))
    assert decided == TopUp("cs_test_a1", USER, 25_000_000)
    assert isinstance(decided, TopUp) and decided.source == "stripe:cs_test_a1"


@pytest.mark.parametrize("status", ["unpaid", "no_payment_required", None])
def test_a_session_not_paid_grants_nothing(status: str | None) -> None:
    decided = top_up_of(event(payment_status=status))
    assert isinstance(decided, Receipt) and decided.outcome is Outcome.ignored


def test_an_event_of_another_type_grants_nothing() -> None:
    assert top_up_of(event("charge.refunded")) == Receipt(
        Outcome.ignored, "Goshen does not act on charge.refunded events"
    )


@pytest.mark.parametrize(
    "checkout",
    [
        {"object": "payment_intent"},
        {"id": "cs_\x00"},
        {"metadata": {"goshen_user_id": "usr_x", "goshen_credits": "1"}},
        {"metadata": {"goshen_user_id": USER, "goshen_credits": "one"}},
        {"metadata": {"goshen_user_id": USER}},
    ],
)
def test_a_paid_session_that_names_no_valid_grant_is_rejected(checkout: dict[str, Any]) -> None:
    decided = top_up_of(event(**checkout))
    assert isinstance(decided, Receipt) and decided.outcome is Outcome.rejected


@pytest.mark.parametrize(
    "body",
    [{}, {"id": "evt_1"}, {"id": 7, "type": "x"}, {"id": "evt_\x00", "type": "x"}],
)
def test_an_event_needs_a_stripe_id_and_a_type(body: dict[str, Any]) -> None:
    with pytest.raises(MalformedEventError):
        event_id(body)
