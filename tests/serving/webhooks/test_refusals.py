"""A webhook URL the guard refuses at delivery ends its delivery after that one attempt, with the
reason on the delivery row and in the API's /metrics; a name that does not resolve now is only
a failed attempt, retried on the schedule.

Databases and the API (TestClient) are the real fixtures; DNS answers are made up for test
names (`fake_dns`, or a lookup that fails), since real DNS cannot be steered from a test.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from fastapi.testclient import TestClient

from goshen.config import Settings
from goshen.db.models import DeliveryStatus
from serving.webhooks.delivery import deliver_due
from tests.serving.webhooks.factories import Sessions, delivery_of, make_job, queue_event


def _metric(text: str, line_start: str) -> float:
    (value,) = [line.split()[-1] for line in text.splitlines() if line.startswith(line_start)]
    return float(value)


def test_a_permanently_refused_url_ends_after_one_attempt_visibly(
    sessions: Sessions, hook_settings: Settings, client: TestClient
) -> None:
    # Stored as if it had passed at submission and its host later moved to a private address.
    job = make_job(sessions, webhook="http://10.1.2.3:8080/hook")
    queue_event(sessions, job)

    assert deliver_due(sessions, hook_settings) == 1

    refused = delivery_of(sessions, job)
    assert refused.status == DeliveryStatus.failed and refused.attempt == 1
    assert refused.status_code is None
    error = refused.last_error or ""
    assert error.startswith("not retried: webhook URL refused")
    assert "10.1.2.3, a private address" in error
    assert deliver_due(sessions, hook_settings) == 0  # nothing left to retry

    scraped = client.get("/metrics").text
    assert _metric(scraped, 'goshen_webhook_deliveries{status="failed"}') == 1
    assert _metric(scraped, 'goshen_webhook_deliveries{status="pending"}') == 0
    assert _metric(scraped, 'goshen_webhook_deliveries_failed{reason="refused"}') == 1
    assert _metric(scraped, 'goshen_webhook_deliveries_failed{reason="exhausted"}') == 0


def test_a_name_that_does_not_resolve_now_is_retried(
    sessions: Sessions, hook_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "not-yet.test":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    job = make_job(sessions, webhook="https://not-yet.test/hook")
    queue_event(sessions, job)

    deliver_due(sessions, hook_settings)

    retried = delivery_of(sessions, job)
    assert retried.status == DeliveryStatus.pending and retried.attempt == 1
    assert "does not resolve" in (retried.last_error or "")
    assert not (retried.last_error or "").startswith("not retried")
