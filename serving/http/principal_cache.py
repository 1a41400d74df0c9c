"""Authenticated keys in memory, so a request's key check costs no database round trip.

A revoked key must fail at once, in every API process. So whatever revokes a key, or disables
or demotes a user, calls `changed(user_id)` after its commit, and every process drops what it
cached of that user before its next request is answered:
- on PostgreSQL through a notification on `goshen_keys` (while the LISTEN connection is down,
  nothing is cached at all, and when it has been reopened the cache starts over: what was sent
  in between never arrives);
- on SQLite (one host) through a stamp file under GOSHEN_HOME, checked with a stat at most every
  STAMP_CHECK_SECONDS (a stat costs more than the rest of a cached lookup): a change to it drops
  the whole cache, so another process sees a revocation within that interval.
Entries also expire after TTL_SECONDS.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from goshen import keys
from goshen.accounts import Principal
from goshen.db.notifications import KEYS_CHANNEL, notify

TTL_SECONDS = 30.0
STAMP_CHECK_SECONDS = 0.05
MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(
        self,
        *,
        listen_session: Callable[[], int | None] | None,
        stamp: Path | None,
        ttl: float = TTL_SECONDS,
    ) -> None:
        # PostgreSQL: `listen_session()` names the LISTEN connection revocations arrive on (None:
        # none now). SQLite: `stamp` is the file other processes touch when they revoke.
        self.listen_session = listen_session
        self._session_seen: int | None = None
        self.stamp = stamp
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._stamp_seen = self._stamp_time()
        self._stamp_checked = time.monotonic()
        # Bumped by every drop: a lookup that began before one must not store what it read.
        self.generation = 0
        self._lock = threading.Lock()

    def get(self, plaintext: str) -> Principal | None:
        """The cached principal for this key, when fresh and safe to use."""
        if not self._current():
            return None
        with self._lock:
            cached = self._entries.get(keys.hash_key(plaintext))
        if cached is None or time.monotonic() - cached[0] >= self.ttl:
            return None
        return cached[1]

    def put(self, plaintext: str, principal: Principal, read_at_generation: int) -> None:
        """Cache what a lookup read, unless something was dropped since it began."""
        if not self._current():
            return
        with self._lock:
            if self.generation != read_at_generation:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # rare, and cheap to refill
            self._entries[keys.hash_key(plaintext)] = (time.monotonic(), principal)

    def announce(self, session: Session, user_id: str) -> None:
        """Tell other processes, when `session` commits, that this user's keys changed."""
        notify(session, KEYS_CHANNEL, user_id)

    def changed(self, user_id: str) -> None:
        """After the commit that revoked or changed: drop this user's keys here and (SQLite)
        make every other process drop its cache."""
        self.forget_user(user_id)
        if self.stamp is not None:
            self.stamp.parent.mkdir(parents=True, exist_ok=True)
            self.stamp.touch()
            # An explicit nanosecond mtime: the clock touch() uses ticks only every few ms, so
            # two revocations within one tick could leave the same stamp.
            now = time.time_ns()
            os.utime(self.stamp, ns=(now, now))

    def forget_user(self, user_id: str) -> None:
        with self._lock:
            self.generation += 1
            for digest in [d for d, (_, p) in self._entries.items() if p.user.id == user_id]:
                del self._entries[digest]

    def _current(self) -> bool:
        """Whether the cache may be used now; drops it when another process revoked."""
        if self.listen_session is not None:
            session = self.listen_session()
            if session != self._session_seen:  # down, or reopened: notifications were missed
                self._clear()
                self._session_seen = session
            return session is not None
        now = time.monotonic()
        if now - self._stamp_checked >= STAMP_CHECK_SECONDS:
            self._stamp_checked = now
            stamped = self._stamp_time()
            if stamped != self._stamp_seen:
                self._clear()
                self._stamp_seen = stamped
        return True

    def _stamp_time(self) -> int | None:
        if self.stamp is None:
            return None
        try:
            return self.stamp.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()
