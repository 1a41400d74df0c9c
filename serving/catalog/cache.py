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
MAX_ENTRIES = 10_000  # names asked for, found or not; past it the cache starts over


class CatalogCache:
    """Entries by their `key` column (the API looks them up by name, workers by id)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        ttl: float = TTL_SECONDS,
        key: InstrumentedAttribute[str] = Model.name,
    ) -> None:
        self.factory = factory
        self.ttl = ttl
        self.key = key
        self._entries: dict[str, tuple[float, Model | None]] = {}
        # Bumped by every invalidation: a read that began before one must not store what it read.
        self._generation = 0
        self._lock = threading.Lock()

    def fresh(self, name: str) -> tuple[bool, Model | None]:
        """(whether a fresh copy is cached, the cached entry); never touches the database."""
        with self._lock:
            cached = self._entries.get(name)
        if cached is None or time.monotonic() - cached[0] >= self.ttl:
            return False, None
        return True, cached[1]

    def get(self, name: str) -> Model | None:
        """The entry whose key is `name` (detached), or None; reads the database when stale."""
        hit, model = self.fresh(name)
        if hit:
            return model
        generation = self._generation
        with self.factory() as session:
            model = session.scalar(select(Model).where(self.key == name))
            if model is not None:
                session.expunge(model)
        with self._lock:
            if self._generation == generation:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[name] = (time.monotonic(), model)
        return model

    def invalidate(self, name: str) -> None:
        """Forget `name` after a change to it has committed; a read in flight is not kept."""
        with self._lock:
            self._generation += 1
            self._entries.pop(name, None)
