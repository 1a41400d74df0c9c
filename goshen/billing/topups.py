"""Top-ups paid through Stripe Checkout: what a verified Stripe event grants, granted once.

The Checkout Session that sells credits names, in its `metadata`, the user to credit
(`goshen_user_id`, a `usr_...` id) and how many credits (`goshen_credits`, a decimal count such
as "25" or "12.5", at most 6 decimal places). Only the holder of the Stripe account's secret key
creates sessions and sets their metadata; the paying customer cannot change it, so it is trusted
as the order. Credit is granted only once the session is `paid`: on `checkout.session.completed`
for card payments, on `checkout.session.async_payment_succeeded` for payment methods that settle
later (bank debits), whose `completed` event says `unpaid`.

A session is granted once, whichever of its events arrives and however often: the ledger source
is the Checkout Session's id (`stripe:cs_...`), one per event id a fortiori, so a redelivered
event, or both events of one session, move credit once.

Everything an event says is final: Stripe signs it and never changes it. So an event that cannot
be granted (its metadata names no user, an unknown one, or a malformed amount) is answered as
handled (`rejected`) and logged at ERROR for an operator, who can grant by hand or refund. An
error status would gain nothing: Stripe would redeliver the same event for three days, then may
disable the endpoint, which would stop every other top-up. Only what a retry can fix (the
database not answering) is answered with an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from goshen.billing import ledger
from goshen.billing.money import MICROS_PER_CREDIT, credits
from goshen.db.models import User
from goshen.ids import id_pattern

TOP_UP_EVENTS = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
USER_KEY = "goshen_user_id"
CREDITS_KEY = "goshen_credits"
SOURCE_PREFIX = "stripe:"
MAX_TOP_UP_MICROS = 10**15  # a billion credits, as for an admin's grant
# Stripe's ids are letters, digits and underscores; bounded so the ledger's source fits.
_STRIPE_ID = re.compile(r"[A-Za-z0-9_]{1,200}")
_USER_ID = re.compile(id_pattern("usr"))
_CREDITS = re.compile(r"(\d{1,10})(?:\.(\d{1,6}))?")
log = logging.getLogger(__name__)


class MalformedEventError(ValueError):
    """A signed body that is not a Stripe event: no object with a string `id` and `type`."""


class Outcome(StrEnum):
    granted = "granted"
    already_granted = "already_granted"
    ignored = "ignored"
    rejected = "rejected"


@dataclass(frozen=True)
class Receipt:
    """What an event caused, and why, in words an operator reads in Stripe's delivery log."""

    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class TopUp:
    """Credit a paid Checkout Session buys."""

    checkout_session_id: str
    user_id: str
    amount_micros: int

    @property
    def source(self) -> str:
        return f"{SOURCE_PREFIX}{self.checkout_session_id}"


def event_id(event: Mapping[str, Any]) -> str:
    """The event's id, once its shape is checked (MalformedEventError otherwise)."""
    identifier, kind = event.get("id"), event.get("type")
    if not isinstance(identifier, str) or _STRIPE_ID.fullmatch(identifier) is None:
        raise MalformedEventError("it has no `id` that is a Stripe id (evt_...)")
    if not isinstance(kind, str):
        raise MalformedEventError("it has no `type` string")
    return identifier


def parse_credits(text: object) -> int:
    """A decimal count of credits ("12.5") as micro-credits, exactly; ValueError when it is not
    one, or not in (0, a billion]."""
    match = _CREDITS.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{CREDITS_KEY} is {text!r}, not a decimal count of credits with at most 6 decimal "
            'places (such as "25" or "12.5")'
        )
    whole, fraction = match.group(1), match.group(2) or ""
    micros = int(whole) * MICROS_PER_CREDIT + int(fraction.ljust(6, "0"))
    if not 0 < micros <= MAX_TOP_UP_MICROS:
        raise ValueError(f"{CREDITS_KEY} is {text!r}; a top-up is more than 0 and at most 1e9")
    return micros


def top_up_of(event: Mapping[str, Any]) -> TopUp | Receipt:
    """What a Stripe event grants: a TopUp, or the Receipt that says why it grants nothing."""
    kind = event.get("type")
    if kind not in TOP_UP_EVENTS:
        return Receipt(Outcome.ignored, f"Goshen does not act on {kind} events")
    data = event.get("data")
    checkout = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(checkout, Mapping) or checkout.get("object") != "checkout.session":
        return Receipt(Outcome.rejected, "its data.object is not a Checkout Session")
    session_id = checkout.get("id")
    if not isinstance(session_id, str) or _STRIPE_ID.fullmatch(session_id) is None:
        return Receipt(Outcome.rejected, "its Checkout Session has no id that is a Stripe id")
    metadata = checkout.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    if USER_KEY not in metadata and CREDITS_KEY not in metadata:
        return Receipt(
            Outcome.ignored,
            f"checkout session {session_id} is not a Goshen top-up: its metadata has no "
            f"{USER_KEY} or {CREDITS_KEY}",
        )
    status = checkout.get("payment_status")
    if status != "paid":
        return Receipt(
            Outcome.ignored,
            f"checkout session {session_id} is {status!r}, not 'paid': its credit is granted "
            "when Stripe sends checkout.session.async_payment_succeeded",
        )
    user_id = metadata.get(USER_KEY)
    if not isinstance(user_id, str) or _USER_ID.fullmatch(user_id) is None:
        return Receipt(
            Outcome.rejected,
            f"checkout session {session_id}: {USER_KEY} is {user_id!r}, not a Goshen user id "
            "(usr_...)",
        )
    try:
        amount = parse_credits(metadata.get(CREDITS_KEY))
    except ValueError as exc:
        return Receipt(Outcome.rejected, f"checkout session {session_id}: {exc}")
    return TopUp(session_id, user_id, amount)


def grant_top_up(session: Session, event: Mapping[str, Any]) -> Receipt:
    """Grant what a verified Stripe event pays for, once per Checkout Session, and log what it
    caused. The caller commits."""
    identifier = event_id(event)
    decided = top_up_of(event)
    if isinstance(decided, TopUp):
        decided = _grant(session, decided, identifier)
    level = logging.ERROR if decided.outcome is Outcome.rejected else logging.INFO
    log.log(level, "Stripe event %s %s: %s", identifier, decided.outcome.value, decided.detail)
    return decided


def _grant(session: Session, top_up: TopUp, event: str) -> Receipt:
    amount = credits(top_up.amount_micros)
    if session.get(User, top_up.user_id) is None:
        return Receipt(
            Outcome.rejected,
            f"checkout session {top_up.checkout_session_id} pays {amount} credits to "
            f"{top_up.user_id}, which is no Goshen user: grant them by hand or refund",
        )
    entry, added = ledger.grant(
        session,
        user_id=top_up.user_id,
        source=top_up.source,
        amount_micros=top_up.amount_micros,
        reason=f"Stripe top-up: checkout session {top_up.checkout_session_id}, event {event}",
    )
    if not added:
        return Receipt(
            Outcome.already_granted,
            f"checkout session {top_up.checkout_session_id} was granted before (entry {entry.id})",
        )
    return Receipt(
        Outcome.granted,
        f"{amount} credits granted to {top_up.user_id} (entry {entry.id})",
    )
