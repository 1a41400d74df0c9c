"""Waiting on jobs inside the API: `Prefer: wait` and the event streams.

One listener thread per API process turns PostgreSQL notifications (a job has new events) into
wake-ups of the coroutines waiting on that job. Waiters also poll — often on SQLite, where there
are no notifications, rarely on PostgreSQL — so nothing depends on a notification arriving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from goshen.db.notifications import JOB_EVENTS_CHANNEL, Listener, is_postgres

SQLITE_POLL_SECONDS = 0.1
POSTGRES_POLL_SECONDS = 1.0
LISTEN_TIMEOUT_SECONDS = 1.0

log = logging.getLogger(__name__)


class JobWatcher:
    """Wake-ups per job id for coroutines on one event loop; `also` maps other channels this
    process listens to (on the same connection) to callbacks run on the listener thread."""

    def __init__(
        self, database_url: str, also: dict[str, Callable[[str], None]] | None = None
    ) -> None:
        self.poll_seconds = (
            POSTGRES_POLL_SECONDS if is_postgres(database_url) else SQLITE_POLL_SECONDS
        )
        self._also = also or {}
        self._listener = Listener(database_url, (JOB_EVENTS_CHANNEL, *self._also))
        self._listening = is_postgres(database_url)
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def _listen(self) -> None:
        while not self._stop.is_set():
            for channel, payload in self._listener.wait(LISTEN_TIMEOUT_SECONDS):
                if channel == JOB_EVENTS_CHANNEL:
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._wake, payload)
                elif channel in self._also:
                    self._also[channel](payload)

    @property
    def listen_session(self) -> int | None:
        """The LISTEN connection's number, None while there is none (see Listener.session)."""
        return self._listener.session

    def _wake(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[JobWaiter]:
        """Wake-ups for `job_id` from now on: enter before reading the job, so none is missed."""
        waiter = JobWaiter(asyncio.Event(), self.poll_seconds)
        self._waiters[job_id].add(waiter.event)
        try:
            yield waiter
        finally:
            waiting = self._waiters[job_id]
            waiting.discard(waiter.event)
            if not waiting:
                del self._waiters[job_id]


@dataclass
class JobWaiter:
    event: asyncio.Event
    poll_seconds: float

    async def changed(self, timeout: float) -> None:
        """Return when the job may have new events, or after `timeout` seconds at the latest."""
        # On a timeout the caller polls: it reads the database either way.
        with suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout=min(timeout, self.poll_seconds))
        self.event.clear()
