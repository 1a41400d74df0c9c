"""Waiting on jobs inside the API: `Prefer: wait` and the event streams.

One listener thread per API process turns PostgreSQL notifications (a job has new events) into
wake-ups of the coroutines waiting on that job, so an idle waiter reads nothing. Nothing depends
on a notification arriving, though:
- when the LISTEN connection is lost or reopened, notifications may have been missed: every
  waiter is woken once to read again, and while it is down waiters poll every second;
- every SWEEP_SECONDS the listener thread asks, in one query for all the jobs waited on, which
  of them have newer events than at its last sweep, and wakes their waiters (`EventSweep`);
- each waiter still reads every POSTGRES_POLL_SECONDS, a last resort.
On SQLite, where there are no notifications, waiters poll often (SQLITE_POLL_SECONDS).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import psycopg
from sqlalchemy.engine import make_url

from goshen.db.notifications import JOB_EVENTS_CHANNEL, Listener, is_postgres

SQLITE_POLL_SECONDS = 0.1
# While notifications arrive, a waiter's own poll is a last resort (the sweep covers a lost
# notification within SWEEP_SECONDS): a thousand idle streams make few reads.
POSTGRES_POLL_SECONDS = 120.0
SWEEP_SECONDS = 10.0
# While the LISTEN connection is down (it is reopened every RECONNECT_SECONDS).
UNLISTENED_POLL_SECONDS = 1.0
LISTEN_TIMEOUT_SECONDS = 1.0

log = logging.getLogger(__name__)


class JobWatcher:
    """Wake-ups per job id for coroutines on one event loop; `also` maps other channels this
    process listens to (on the same connection) to callbacks run on the listener thread."""

    def __init__(
        self, database_url: str, also: dict[str, Callable[[str], None]] | None = None
    ) -> None:
        self._listening = is_postgres(database_url)
        self._also = also or {}
        self._listener = Listener(database_url, (JOB_EVENTS_CHANNEL, *self._also))
        self._sweep = EventSweep(database_url) if self._listening else None
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def poll_seconds(self) -> float:
        """How long a waiter may go without reading: long only while notifications arrive."""
        if not self._listening:
            return SQLITE_POLL_SECONDS
        return POSTGRES_POLL_SECONDS if self._listener.connected else UNLISTENED_POLL_SECONDS

    def start(self) -> None:
        """Start listening (PostgreSQL only); call from the event loop that will wait."""
        self._loop = asyncio.get_running_loop()
        if self._listening:
            self._thread = threading.Thread(target=self._listen, name="job-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_TIMEOUT_SECONDS * 3)
        self._listener.close()
        if self._sweep is not None:
            self._sweep.close()

    def _listen(self) -> None:
        assert self._loop is not None
        session = self._listener.session
        swept = time.monotonic()
        while not self._stop.is_set():
            for channel, payload in self._listener.wait(LISTEN_TIMEOUT_SECONDS):
                if channel == JOB_EVENTS_CHANNEL:
                    self._loop.call_soon_threadsafe(self._wake, payload)
                elif channel in self._also:
                    self._also[channel](payload)
            if self._listener.session != session:
                # Lost (waiters must poll often now) or reopened (what was sent in between
                # never arrives): every waiter reads again.
                session = self._listener.session
                with suppress(RuntimeError):  # the loop closed: nobody waits any more
                    self._loop.call_soon_threadsafe(self._wake_all)
            if self._sweep is not None and time.monotonic() - swept >= SWEEP_SECONDS:
                swept = time.monotonic()
                # list() of a dict's keys runs whole under the GIL: a safe snapshot.
                for job_id in self._sweep.changed(list(self._waiters)):
                    with suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(self._wake, job_id)

    @property
    def listen_session(self) -> int | None:
        """The LISTEN connection's number, None while there is none (see Listener.session)."""
        return self._listener.session

    def _wake(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiting in self._waiters.values():
            for event in waiting:
                event.set()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[JobWaiter]:
        """Wake-ups for `job_id` from now on: enter before reading the job, so none is missed."""
        waiter = JobWaiter(asyncio.Event(), self)
        self._waiters[job_id].add(waiter.event)
        try:
            yield waiter
        finally:
            waiting = self._waiters[job_id]
            waiting.discard(waiter.event)
            if not waiting:
                del self._waiters[job_id]


class EventSweep:
    """Which of the jobs waited on have newer events than at the last sweep: one indexed query
    for all of them, on a connection of its own (used by the listener thread only). Within a job
    event ids grow in commit order, so a job's newest id changes exactly when it has news."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._connection: psycopg.Connection | None = None
        self._newest: dict[str, int] = {}

    def changed(self, job_ids: list[str]) -> list[str]:
        """The jobs among `job_ids` whose newest event changed (or was first seen) since the
        last sweep; none when the database does not answer (the next sweep tries again)."""
        if not job_ids:
            self._newest = {}
            return []
        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    options="-c statement_timeout=5000",
                )
            rows = self._connection.execute(
                "SELECT job_id, max(id) FROM job_events WHERE job_id = ANY(%s) GROUP BY job_id",
                (job_ids,),
            ).fetchall()
        except psycopg.Error as exc:
            log.warning("cannot sweep for job events (%s); trying again later", exc)
            self.close()
            return []
        newest = {str(job_id): int(top) for job_id, top in rows}
        changed = [job_id for job_id, top in newest.items() if self._newest.get(job_id) != top]
        self._newest = newest
        return changed

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class JobWaiter:
    """One coroutine's wake-ups for a job. Setting `event` (a notification, or anything else
    that wants the coroutine to look again, such as the server stopping) ends a wait early."""

    event: asyncio.Event
    watcher: JobWatcher
    read_at: float = field(default_factory=time.monotonic)

    @property
    def poll_seconds(self) -> float:
        return self.watcher.poll_seconds

    async def changed(self, timeout: float) -> bool:
        """Wait until the job may have new events — woken, or its poll is due — or `timeout`
        seconds at the latest. True: read it now (the caller's read restarts the poll clock)."""
        poll_due = self.read_at + self.poll_seconds - time.monotonic()
        wait = max(min(timeout, poll_due), 0.0)
        woken = self.event.is_set()
        if not woken and wait > 0:
            woken = await wait_for_event(self.event, wait)
        self.event.clear()
        if woken or time.monotonic() >= self.read_at + self.poll_seconds:
            self.read_at = time.monotonic()
            return True
        return False


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout` seconds. asyncio.timeout, not asyncio.wait_for:
    no task per wait, and a thousand idle streams each wait every few seconds."""
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
