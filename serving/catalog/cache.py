"""Catalog entries read from memory, re-read once they are older than the cache's TTL.

A prediction must not wait on the database for its model's row, nor a worker's batch; deploys,
undeploys and pricing changes made elsewhere reach this process within the TTL (at once in the
API process that made them: the admin routes invalidate the entry they change).
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from goshen.db.models import Model

TTL_SECONDS = 1.0
MAX_ENTRIES = 10_000  # keys asked for, found or not; past it the cache starts over


class CatalogCache:
    """Entries by the column `by` (the API looks them up by name, workers by id)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        ttl: float = TTL_SECONDS,
        by: InstrumentedAttribute[str] = Model.name,
    ) -> None:
        self.factory = factory
        self.ttl = ttl
        self.by = by
        self._entries: dict[str, tuple[float, Model | None]] = {}
        # Bumped by every invalidation: a read that began before one must not store what it read.
        self._generation = 0
        self._lock = threading.Lock()

    def fresh(self, key: str) -> tuple[bool, Model | None]:
        """(whether a fresh copy is cached, the cached entry); never touches the database."""
        with self._lock:
            cached = self._entries.get(key)
        if cached is None or time.monotonic() - cached[0] >= self.ttl:
            return False, None
        return True, cached[1]

    def get(self, key: str) -> Model | None:
        """The entry whose `by` column holds `key` (detached), or None; read again when stale."""
        hit, model = self.fresh(key)
        if hit:
            return model
        generation = self._generation
        with self.factory() as session:
            model = session.scalar(select(Model).where(self.by == key))
            if model is not None:
                session.expunge(model)
        with self._lock:
            if self._generation == generation:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[key] = (time.monotonic(), model)
        return model

    def invalidate(self, key: str) -> None:
        """Forget `key` after a change to it has committed; a read in flight is not kept."""
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)
