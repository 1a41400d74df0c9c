"""Catalog entries read from memory, re-read once they are older than the cache's TTL.

A prediction must not wait on the database for its model's row, nor a worker's batch. Workers
call `get`, which reads again in the caller's thread once an entry is TTL old. The API calls
`lookup`, which serves an entry up to STALE_SECONDS old and refreshes it in the background once
it is TTL old, so that an expiry under load costs one read instead of one per waiting request,
and concurrent callers with no usable entry share one read.

How soon a change made elsewhere reaches this process: an entry's age counts from when its read
began, and `lookup` never serves one older than STALE_SECONDS (3 s), so a deploy, undeploy or
pricing change committed in another API process reaches every request that starts here more than
STALE_SECONDS after the commit; only a database read slower than that (each is bounded by the
database's timeouts) can stretch it, for the requests waiting on that read. Workers see it within
their TTL. Under steady traffic it takes about TTL plus one read, since the first request past the
TTL starts the refresh; the full bound is reached when traffic is sparse or the database is slow
or down. The API process that made a change sees it at once: the admin routes invalidate the
entry they change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from goshen.db.models import Model

log = logging.getLogger(__name__)

TTL_SECONDS = 1.0
# Three TTLs: a refresh has two seconds to land (or a database blip to pass) before requests
# wait on a read of their own, and a change still reaches every API process well within the 5 s
# the README promises for following the catalog.
STALE_SECONDS = 3.0
MAX_ENTRIES = 10_000
READER_THREADS = 4  # keys asked for, found or not; past it the cache starts over


class _Entry(NamedTuple):
    read_at: float  # monotonic time its read began
    model: Model | None
    refresh_after: float  # no background refresh starts before this


class CatalogCache:
    """Entries by the column `by` (the API looks them up by name, workers by id)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        ttl: float = TTL_SECONDS,
        by: InstrumentedAttribute[str] = Model.name,
        stale: float = STALE_SECONDS,
    ) -> None:
        self.factory = factory
        self.ttl = ttl
        self.by = by
        self.stale = stale
        self._entries: dict[str, _Entry] = {}
        # The read of each key that `lookup` callers share, at most one at a time.
        self._reads: dict[str, Future[Model | None]] = {}
        # Bumped by every invalidation: a read that began before one must not store what it read.
        self._generation = 0
        self._lock = threading.Lock()
        # Reads for `lookup`, a few at a time (one per key): a burst of distinct names waits
        # its turn instead of starting a thread each.
        self._readers = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="catalog")

    def fresh(self, key: str) -> tuple[bool, Model | None]:
        """(whether a fresh copy is cached, the cached entry); never touches the database."""
        with self._lock:
            cached = self._entries.get(key)
        if cached is None or time.monotonic() - cached.read_at >= self.ttl:
            return False, None
        return True, cached.model

    def get(self, key: str) -> Model | None:
        """The entry whose `by` column holds `key` (detached), or None; read again when stale."""
        hit, model = self.fresh(key)
        if hit:
            return model
        generation = self._generation
        read_at, model = self._read(key)
        with self._lock:
            self._store(key, read_at, model, generation)
        return model

    async def lookup(self, key: str) -> Model | None:
        """Like `get`, for the event loop: an entry up to `stale` seconds old comes back at once
        (past the TTL, it starts the key's one background refresh); otherwise the caller awaits
        the key's one read in flight, starting it if none is, and gets its result or error."""
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(key)
            read = self._reads.get(key)
            if cached is not None and now - cached.read_at < self.stale:
                if read is None and now >= cached.refresh_after:
                    # One attempt per TTL: a database that is down is not retried per request.
                    self._entries[key] = cached._replace(refresh_after=now + self.ttl)
                    self._start_read(key)
                return cached.model
            if read is None:
                read = self._start_read(key)
        return await asyncio.wrap_future(read)

    def invalidate(self, key: str) -> None:
        """Forget `key` after a change to it has committed; a read in flight is not kept, and
        callers from now on do not share it."""
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)
            self._reads.pop(key, None)

    def _start_read(self, key: str) -> Future[Model | None]:
        """Read `key` on the cache's threads; callers hold the lock."""
        read: Future[Model | None] = Future()
        # Running from the start: a waiter that is cancelled cannot cancel it for the others.
        read.set_running_or_notify_cancel()
        try:
            self._readers.submit(self._read_into, key, read, self._generation)
        except RuntimeError as exc:  # shut down, or no thread could start: nobody may wait on it
            read.set_exception(exc)
            return read
        self._reads[key] = read
        return read

    def close(self) -> None:
        """Stop the reader threads: reads not started are dropped, and whoever waits on a read
        gets an error."""
        with self._lock:
            reads, self._reads = list(self._reads.values()), {}
        self._readers.shutdown(wait=False, cancel_futures=True)
        for read in reads:
            _settle(read, error=RuntimeError("the catalog cache was closed"))

    def _read_into(self, key: str, read: Future[Model | None], generation: int) -> None:
        try:
            read_at, model = self._read(key)
        except Exception as exc:  # noqa: BLE001 - handed to the callers waiting on the read
            # Callers with a stale entry never see it: logged for them.
            log.warning("reading catalog entry %s=%r failed: %r", self.by.key, key, exc)
            with self._lock:
                self._end_read(key, read)
            _settle(read, error=exc)
            return
        with self._lock:
            self._end_read(key, read)
            self._store(key, read_at, model, generation)
        _settle(read, model)

    def _read(self, key: str) -> tuple[float, Model | None]:
        read_at = time.monotonic()
        with self.factory() as session:
            model = session.scalar(select(Model).where(self.by == key))
            if model is not None:
                session.expunge(model)
        return read_at, model

    def _end_read(self, key: str, read: Future[Model | None]) -> None:
        if self._reads.get(key) is read:  # not when an invalidation dropped it
            del self._reads[key]

    def _store(self, key: str, read_at: float, model: Model | None, generation: int) -> None:
        if self._generation != generation:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = _Entry(read_at, model, read_at + self.ttl)


def _settle(
    read: Future[Model | None], model: Model | None = None, error: BaseException | None = None
) -> None:
    """Complete `read` unless `close` completed it first."""
    try:
        if error is not None:
            read.set_exception(error)
        else:
            read.set_result(model)
    except InvalidStateError:
        pass
