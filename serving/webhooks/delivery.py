"""`goshen webhooks`: claims due outbox rows, posts them signed, and retries for hours.

The dispatcher is one continuous loop over a bounded pool: whenever it has room (at most
GOSHEN_WEBHOOK_CONCURRENCY attempts in flight, GOSHEN_WEBHOOK_CONCURRENCY_PER_RECEIVER to one
receiver) it claims what is due, and it never waits for a batch to finish, so one slow receiver
never delays another's deliveries. It wakes on a PostgreSQL NOTIFY, when an attempt ends, and at
least every MAX_POLL_SECONDS, so a retry is picked up within about a second of falling due.
Attempts run as asyncio tasks on one event loop, each under its own deadline
(serving.webhooks.attempt); the database calls run in threads. Claims and outcomes are
serving.webhooks.claims: crash-safe leases, outcomes written only while the claim is ours.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from goshen import logs, tracing
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate
from goshen.db.models import utcnow
from goshen.db.notifications import WEBHOOKS_CHANNEL, Listener
from goshen.storage import ArtifactStore, make_store
from serving.webhooks.attempt import AttemptResult, ClaimedDelivery, post_delivery
from serving.webhooks.claims import claim_due, record_attempt

log = logging.getLogger(__name__)
T = TypeVar("T")

# The lease of a claim: the attempt's deadline plus this, for recording its outcome.
CLAIM_MARGIN_SECONDS = 30.0
BATCH_SIZE = 16
STOP_CHECK_SECONDS = 0.5
# The longest the dispatcher sleeps without looking for due rows: retries fall due by the
# clock, and nothing notifies then.
MAX_POLL_SECONDS = 1.0
DATABASE_THREADS = 4


class Dispatcher:
    """The pool: attempts in flight, by receiver, on the running event loop."""

    def __init__(
        self, factory: sessionmaker[Session], settings: Settings, store: ArtifactStore
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.store = store
        self.lease = timedelta(seconds=settings.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS)
        self.in_flight: dict[asyncio.Task[None], str] = {}
        # Claims and outcomes on threads of their own: DNS lookups, which may hang past their
        # deadline holding a thread, must never delay recording an outcome past its lease.
        self.database = ThreadPoolExecutor(DATABASE_THREADS, thread_name_prefix="webhook-db")

    async def in_database(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.database, call)

    def close(self) -> None:
        self.database.shutdown(wait=True)

    @property
    def room(self) -> int:
        return self.settings.webhook_concurrency - len(self.in_flight)

    async def claim(self, limit: int, now: datetime | None = None) -> list[ClaimedDelivery]:
        """Due deliveries for up to `limit` more attempts, within every receiver's limit."""
        claim = functools.partial(
            claim_due,
            self.factory,
            now=now or utcnow(),
            lease=self.lease,
            limit=limit,
            store=self.store,
            busy=Counter(self.in_flight.values()),
            per_receiver=self.settings.webhook_concurrency_per_receiver,
            retry_base_seconds=self.settings.webhook_retry_base_seconds,
        )
        return await self.in_database(claim)

    def start(self, claim: ClaimedDelivery, at: datetime | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(self.traced_attempt(claim, at))
        self.in_flight[task] = claim.receiver
        task.add_done_callback(self.in_flight.pop)
        return task

    async def traced_attempt(self, claim: ClaimedDelivery, at: datetime | None) -> None:
        """attempt(), its lines in its job's log context (the request that submitted the job)
        and in a `goshen.deliver` span of the job's trace; its task's own, none leaks."""
        with (
            logs.log_context(
                job_id=claim.job_id, request_id=claim.request_id, event_id=claim.event_id
            ),
            tracing.span("goshen.deliver", claim.span_attributes, parent=claim.traceparent),
        ):
            await self.attempt(claim, at)

    async def attempt(self, claim: ClaimedDelivery, at: datetime | None) -> None:
        """Post, then record; a failure to record leaves the claim to expire and come back."""
        started, clock = at or utcnow(), time.monotonic()
        try:
            result = await post_delivery(claim, self.settings, at=started)
            tracing.annotate(result.span_attributes, error=result.error)
            finished = started + timedelta(seconds=time.monotonic() - clock)
            record = functools.partial(
                record_attempt,
                self.factory,
                claim,
                result,
                at=finished,
                retry_base_seconds=self.settings.webhook_retry_base_seconds,
            )
            await self.in_database(record)
        except OperationalError as exc:
            log.warning("webhook %s: outcome not recorded (%s); it is retried", claim.event_id, exc)
            return
        except Exception:  # one attempt's bug must not end the others; its claim comes back
            log.exception("webhook %s attempt %d broke", claim.event_id, claim.attempt)
            return
        log.info("webhook %s attempt %d: %s", claim.event_id, claim.attempt, _summary(result))

    async def run(self, listener: Listener, stop: threading.Event) -> None:
        """Claim whenever there is room, until `stop`; then let the attempts in flight end."""
        waiting = _Waiting(listener)
        while not stop.is_set():
            if self.room > 0:
                try:
                    for claim in await self.claim(self.room):
                        self.start(claim)
                except OperationalError as exc:
                    log.warning("platform database unavailable, retrying: %s", exc)
                except Exception:  # a row that cannot be claimed must not stop every delivery
                    log.exception("could not claim due webhooks; retrying")
            poll = min(self.settings.queue_poll_seconds, MAX_POLL_SECONDS)
            await waiting.until_work(set(self.in_flight), poll, stop)
        if self.in_flight:
            await asyncio.wait(set(self.in_flight))
        await waiting.finish()


class _Waiting:
    """Waits on the LISTEN connection in a thread, one wait at a time (it is not thread-safe)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.pending: asyncio.Future[list[tuple[str, str]]] | None = None

    async def until_work(
        self, attempts: set[asyncio.Task[None]], seconds: float, stop: threading.Event
    ) -> None:
        """Until a NOTIFY, an attempt ends (room), `stop`, or `seconds`, whichever is first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not stop.is_set() and (left := deadline - loop.time()) > 0:
            if self.pending is None:
                wait = self.listener.wait
                self.pending = asyncio.ensure_future(asyncio.to_thread(wait, STOP_CHECK_SECONDS))
            watched: set[asyncio.Future[Any]] = {self.pending, *attempts}
            done, _ = await asyncio.wait(watched, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if self.pending in done:
                notified, self.pending = self.pending.result(), None
                if notified:
                    return
            if done & attempts:
                return

    async def finish(self) -> None:
        if self.pending is not None:
            await self.pending


def deliver_due(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    limit: int = BATCH_SIZE,
    now: datetime | None = None,
    store: ArtifactStore | None = None,
) -> int:
    """One pass: claim what is due at `now`, post it concurrently, record; the count claimed."""
    started = now or utcnow()

    async def one_pass() -> int:
        dispatcher = Dispatcher(factory, settings, store or make_store(settings))
        try:
            claims = await dispatcher.claim(limit, now=started)
            tasks = [dispatcher.start(claim, at=started) for claim in claims]
            if tasks:
                await asyncio.wait(tasks)
        finally:
            dispatcher.close()
        return len(claims)

    return asyncio.run(_with_threads(settings, one_pass()))


def _summary(result: AttemptResult) -> str:
    return "delivered" if result.delivered else f"failed ({result.error})"


def run_dispatcher(settings: Settings, stop: threading.Event) -> int:
    """Deliver webhooks until `stop` is set; PostgreSQL NOTIFY wakes it, polling is the fallback."""
    engine = make_engine(
        settings.resolved_database_url, timeout=settings.dependency_timeout_seconds
    )
    listener = Listener(settings.resolved_database_url, (WEBHOOKS_CHANNEL,))
    try:
        migrate.upgrade(engine)
        dispatcher = Dispatcher(make_sessionmaker(engine), settings, make_store(settings))
        log.info("webhook dispatcher ready")
        try:
            asyncio.run(_with_threads(settings, dispatcher.run(listener, stop)))
        finally:
            dispatcher.close()
        log.info("webhook dispatcher stopped")
    finally:
        listener.close()
        engine.dispose()
    return 0


async def _with_threads(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    """`work`, with a thread for the DNS lookup of every attempt in flight: the default executor
    (a few threads on a small machine) would queue lookups behind each other, eating into their
    deadlines."""
    threads = settings.webhook_concurrency + 4
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
    asyncio.get_running_loop().set_default_executor(executor)
    return await work
