"""POST /v1/billing/stripe/webhook: Stripe's events, verified by their signature; a paid
Checkout Session grants the credits its metadata names (goshen.billing.topups decides what).

Stripe cannot send an API key: the `Stripe-Signature` header (HMAC-SHA256 of the timestamp and
the raw body with the endpoint's signing secret, GOSHEN_STRIPE_WEBHOOK_SECRET) is the
authentication, checked by the `stripe` package on the bytes as they arrived.

Without the secret the route answers 404: top-ups are off in this install. Not 503: the route
takes requests from anyone, and an install that never sells credit must not answer scanners with
server errors (alerts, and the API's "no input reaches a 5xx"); Stripe retries a 404 as it would
a 503, so events sent before the secret is set still arrive once it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import stripe
from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from goshen.billing import topups
from goshen.errors import GoshenError, NotFoundError
from serving.http.dependencies import SessionDep, SettingsDep
from serving.schemas import PublicBody

router = APIRouter(prefix="/v1/billing/stripe", tags=["billing"])
SIGNATURE_HEADER = "Stripe-Signature"
_GENUINE_FAILS_WHEN = (
    "a genuine Stripe delivery fails this only when GOSHEN_STRIPE_WEBHOOK_SECRET is not this "
    "endpoint's signing secret, or the server's clock is off"
)


class StripeSignatureError(GoshenError):
    """400: the request is not a Stripe event signed with this endpoint's secret."""


class StripeEventReceipt(PublicBody):
    """What an event caused; Stripe shows it in the endpoint's delivery log."""

    event_id: str
    outcome: topups.Outcome
    detail: str


_EVENT_SCHEMA = {
    "type": "object",
    "description": "a Stripe event (snapshot payload), sent by Stripe as it signed it",
    "required": ["id", "type", "data"],
    "properties": {
        "id": {"type": "string", "description": "the event's id, evt_..."},
        "type": {"type": "string", "description": "checkout.session.completed, ..."},
        "data": {
            "type": "object",
            "properties": {"object": {"type": "object", "description": "a Checkout Session"}},
        },
    },
}


@router.post(
    "/webhook",
    openapi_extra={
        # No API key: the signature authenticates the request.
        "parameters": [
            {
                "name": SIGNATURE_HEADER,
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
                "description": '`t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`, '
                "as Stripe sends it",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _EVENT_SCHEMA}},
        },
    },
    responses={
        200: {
            "description": "handled: `granted`, `already_granted` (a redelivery, or the "
            "session's other event), `ignored` (another event type, a session not paid yet), "
            "or `rejected` (a paid session whose metadata names no user, an unknown one or a "
            "malformed amount: logged for an operator, since Stripe would redeliver it unchanged)"
        },
        400: {
            "description": "no Stripe-Signature header, a signature that does not match the "
            "body and the secret, a timestamp over 5 minutes old, or a body that is no event"
        },
        404: {"description": "Stripe top-ups are not configured (GOSHEN_STRIPE_WEBHOOK_SECRET)"},
    },
)
async def receive_stripe_event(
    request: Request, settings: SettingsDep, session: SessionDep
) -> StripeEventReceipt:
    """Receive a Stripe event: a paid Checkout Session whose metadata has `goshen_user_id` and
    `goshen_credits` grants those credits to that user, once per session.

    Give Stripe this URL as a webhook endpoint with the events `checkout.session.completed` and
    `checkout.session.async_payment_succeeded`. Needs no API key: Stripe's signature is checked.
    """
    # The header first: a request without it is no Stripe delivery whatever this install's
    # configuration, and the document declares it required (a 400 when it is missing).
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        raise StripeSignatureError(
            f"no {SIGNATURE_HEADER} header: only events Stripe signed are accepted"
        )
    secret = settings.stripe_webhook_secret
    if secret is None:
        raise NotFoundError(
            "Stripe top-ups are not configured on this server: an admin sets "
            "GOSHEN_STRIPE_WEBHOOK_SECRET to the webhook endpoint's signing secret (whsec_...)"
        )
    event = verified_event(await request.body(), signature, secret)
    return await run_in_threadpool(_grant, session, event)


def verified_event(payload: bytes, signature: str, secret: str) -> dict[str, Any]:
    """The event in `payload` once its signature checks out (StripeSignatureError otherwise)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise StripeSignatureError("the body is not UTF-8, so Stripe did not send it") from None
    if not signature.isascii():  # the check's constant-time compare raises on other text
        raise StripeSignatureError(f"the {SIGNATURE_HEADER} header is malformed")
    try:
        # An explicit tolerance: verify_header's own default (None) skips the timestamp check.
        stripe.WebhookSignature.verify_header(
            text, signature, secret, tolerance=stripe.Webhook.DEFAULT_TOLERANCE
        )
    except stripe.SignatureVerificationError as exc:
        raise StripeSignatureError(
            f"the {SIGNATURE_HEADER} check failed: {exc.user_message}; {_GENUINE_FAILS_WHEN}"
        ) from None
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict):
        raise StripeSignatureError("the signed body is not a Stripe event (a JSON object)")
    try:
        topups.event_id(event)
    except topups.MalformedEventError as exc:
        raise StripeSignatureError(f"the signed body is not a Stripe event: {exc}") from None
    return event


def _grant(session: Session, event: Mapping[str, Any]) -> StripeEventReceipt:
    receipt = topups.grant_top_up(session, event)
    session.commit()
    return StripeEventReceipt(
        event_id=topups.event_id(event), outcome=receipt.outcome, detail=receipt.detail
    )
