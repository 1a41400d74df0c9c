"""The dispatcher's pool: one deadline per attempt that a dripping receiver cannot stretch,
receivers that never wait for each other, a per-receiver limit that spends no attempt, and
retries picked up about a second after they fall due.

Receivers are real sockets on loopback: a raw-socket drip server and HTTP servers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import DeliveryStatus
from goshen.storage import make_store
from serving.webhooks import claims
from serving.webhooks.claims import claim_due
from serving.webhooks.delivery import run_dispatcher
from serving.webhooks.outbox import enqueue_event
from tests.serving.webhooks.factories import (
    Sessions,
    delivery_of,
    make_job,
    queue_event,
    with_settings,
)
from tests.serving.webhooks.receivers import DripReceiver, Receiver, status


@contextmanager
def dispatching(settings: Settings) -> Iterator[None]:
    """`goshen webhooks` (its loop, in a thread) for the block."""
    stop = threading.Event()
    dispatcher = threading.Thread(target=run_dispatcher, args=(settings, stop))
    dispatcher.start()
    try:
        yield
    finally:
        stop.set()
        dispatcher.join(timeout=settings.webhook_timeout_seconds + 10)
    assert not dispatcher.is_alive()


def wait_for(condition: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def drip() -> Iterator[DripReceiver]:
    receiver = DripReceiver(interval=1.5, drops=12)  # 18 s of headers, a byte every 1.5 s
    yield receiver
    receiver.close()


def test_a_dripping_receiver_fails_at_the_deadline_and_never_delays_another(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver, drip: DripReceiver
) -> None:
    # Each read gets a byte within 1.5 s, well inside the 3 s timeout: only a deadline on the
    # whole attempt ends it.
    settings = with_settings(hook_settings, webhook_timeout_seconds=3.0, queue_poll_seconds=0.2)
    with dispatching(settings):
        stalled = make_job(sessions, webhook=drip.url)
        queue_event(sessions, stalled)
        assert drip.requested.wait(15), "the dispatcher never posted to the drip receiver"

        on_time = make_job(sessions, webhook=receiver.url)
        queue_event(sessions, on_time)
        assert wait_for(lambda: receiver.received or drip.hung_up.is_set(), 15)
        # The second receiver's webhook arrived while the first attempt was still stalled.
        assert len(receiver.received) == 1 and not drip.hung_up.is_set()

        assert drip.hung_up.wait(15), "the dispatcher held the dripping connection to its end"
        assert drip.held_seconds is not None and drip.held_seconds < 9  # 3 s, not 18 s

        def stalled_failed() -> bool:
            return delivery_of(sessions, stalled).last_error is not None

        assert wait_for(stalled_failed, 10)
    failed = delivery_of(sessions, stalled)
    assert failed.status == DeliveryStatus.pending and failed.status_code is None  # retried
    assert "took longer than GOSHEN_WEBHOOK_TIMEOUT_SECONDS (3 s)" in (failed.last_error or "")
    assert delivery_of(sessions, on_time).status == DeliveryStatus.delivered


def test_a_receiver_at_its_limit_keeps_its_other_rows_due_and_unspent(
    sessions: Sessions, hook_settings: Settings
) -> None:
    busy, other = "https://busy.example.com/hook", "https://other.example.com:8443/hook"
    jobs = [make_job(sessions, webhook=busy) for _ in range(3)] + [make_job(sessions, other)]
    for job in jobs:
        queue_event(sessions, job)
    now = datetime.now(UTC) + timedelta(seconds=1)

    claims = claim_due(
        sessions,
        now=now,
        lease=timedelta(seconds=40),
        limit=10,
        store=make_store(hook_settings),
        busy={"https://busy.example.com:443": 1},  # one attempt to it already in flight
        per_receiver=2,
    )

    assert sorted(claim.url for claim in claims) == [busy, other]
    left = [delivery_of(sessions, job) for job in jobs[:3]]
    untouched = [row for row in left if row.attempt == 0]
    assert len(untouched) == 2
    assert all(row.next_attempt_at <= now for row in untouched)  # still due, nothing spent


def test_a_retry_is_picked_up_about_a_second_after_it_falls_due(
    sessions: Sessions, hook_settings: Settings, receiver: Receiver
) -> None:
    # No NOTIFY marks a retry falling due, and the poll setting is far longer than the wait.
    settings = with_settings(hook_settings, queue_poll_seconds=30.0)
    receiver.answers.append(status(503))
    arrived: list[datetime] = []
    record = receiver.answer

    def answer(handler: object) -> None:
        arrived.append(datetime.now(UTC))
        record(handler)  # type: ignore[arg-type]  # the receiver's own handler

    receiver.answer = answer  # type: ignore[method-assign]  # timestamps each arrival
    job = make_job(sessions, webhook=receiver.url)
    with dispatching(settings):
        queue_event(sessions, job)
        assert wait_for(lambda: delivery_of(sessions, job).attempt == 1, 15)
        assert wait_for(lambda: delivery_of(sessions, job).status_code == 503, 10)
        due = delivery_of(sessions, job).next_attempt_at
        due = due if due.tzinfo else due.replace(tzinfo=UTC)
        assert wait_for(lambda: len(receiver.received) == 2, 20)
    assert delivery_of(sessions, job).status == DeliveryStatus.delivered
    assert (arrived[1] - due).total_seconds() < 3  # about 1 s; slack for a busy machine


def test_a_receivers_backlog_past_a_page_never_hides_another_receivers_due_row(
    sessions: Sessions, hook_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claims, "SCAN_ROWS", 3)  # pages of 3 rows: the backlog spans pages
    busy, other = "https://busy.example.com/hook", "https://other.example.com/hook"
    backlog = [make_job(sessions, webhook=f"{busy}?n={n}") for n in range(8)]
    late = make_job(sessions, other)
    for job in [*backlog, late]:  # the other receiver's row is the newest due
        queue_event(sessions, job)

    chosen = claim_due(
        sessions,
        now=datetime.now(UTC) + timedelta(seconds=1),
        lease=timedelta(seconds=40),
        limit=1,
        store=make_store(hook_settings),
        busy={"https://busy.example.com:443": 2},  # at its limit
        per_receiver=2,
    )

    assert [claim.url for claim in chosen] == [other]
    assert all(delivery_of(sessions, job).attempt == 0 for job in backlog)


def test_a_row_that_cannot_be_prepared_is_put_off_and_blocks_no_other(
    sessions: Sessions, hook_settings: Settings
) -> None:
    poisoned, good = (
        make_job(sessions, "https://a.example.com/hook"),
        make_job(sessions, "https://b.example.com/hook"),
    )
    # An image with a key but not the rest of what a link is rendered from.
    broken = {"type": "completed", "data": {"output": {"images": [{"key": "x.png"}]}}}
    with session_scope(sessions) as session:
        enqueue_event(session, poisoned, "completed", broken)
    queue_event(sessions, good)
    now = datetime.now(UTC) + timedelta(seconds=1)

    chosen = claim_due(
        sessions, now=now, lease=timedelta(seconds=40), limit=10, store=make_store(hook_settings)
    )

    assert [claim.url for claim in chosen] == ["https://b.example.com/hook"]
    row = delivery_of(sessions, poisoned)
    assert row.status == DeliveryStatus.pending and row.attempt == 1
    assert row.last_error is not None and row.last_error.startswith("could not prepare")
    assert row.next_attempt_at.replace(tzinfo=UTC) > now + timedelta(seconds=4)  # the schedule
