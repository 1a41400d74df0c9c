"""A real delivery from the platform checks out on the receiver's side with the SDK's
goshen.webhooks.verify, and with the `standardwebhooks` package a receiver may use instead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks

from goshen.config import Settings
from goshen.webhooks import WebhookVerificationError, verify
from serving.webhooks.delivery import deliver_due
from tests.serving.webhooks.factories import PAYLOAD, Sessions, make_job, queue_event, secret_of
from tests.serving.webhooks.receivers import Receiver


def test_a_delivery_verifies_with_the_sdk_and_with_standardwebhooks(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    job = make_job(sessions, webhook=receiver.url)
    queue_event(sessions, job)

    assert deliver_due(sessions, hook_settings) == 1

    [delivery] = receiver.received
    secret = secret_of(sessions, job)
    assert verify(secret, delivery.headers, delivery.body) == PAYLOAD
    assert standardwebhooks.Webhook(secret).verify(delivery.body, delivery.headers) == PAYLOAD

    replayed_later = datetime.now(UTC) + timedelta(minutes=6)
    with pytest.raises(WebhookVerificationError, match="s old"):
        verify(secret, delivery.headers, delivery.body, now=replayed_later)
    another_users_secret = secret_of(sessions, make_job(sessions, webhook=None))
    with pytest.raises(WebhookVerificationError, match="none of the 1 signature"):
        verify(another_users_secret, delivery.headers, delivery.body)
