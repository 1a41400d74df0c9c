"""What one account may hold of an API process at once, so that its burst never stalls the others.

Blocking work (the database, mostly) runs in anyio's shared pool of worker threads, 40 per
process. One account's submissions go one at a time through its user row's lock
(serving.jobs.submit), each holding a thread while it waits; a burst of them used to take every
thread, and every other account's requests, /healthz among them, queued behind it for seconds.
Three things keep that from happening here (and /healthz and /readyz take no thread):

- `AccountsInFlight` bounds the requests one account has in progress in this process
  (GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT); one more answers 429 with `Retry-After` at once,
  on the event loop, taking no thread. serving.http.dependencies holds a slot from
  authentication until the route's function has returned: an event stream's slot is given back
  before its first event, and a long poll (`Prefer: wait`) gives its slot back before it waits
  (`end_in_flight`), since neither holds a thread while it waits.
- One account's submissions take turns on the event loop (`TurnsPerAccount`): they go one at a
  time through the row lock anyway, while in threads, up to the bound at once, their Python
  work before the lock vied with the event loop for the GIL and slowed every request
  (bench/tenant_burst.py: another account's p99 was 190-230 ms so, 40-130 ms with turns).
- The hot reads (`GET /v1/jobs`, `GET /v1/jobs/{id}`) run on threads of their own
  (`Lanes.read`), so they never queue behind another account's submissions for a thread.

Every count is taken and given back on the event loop's thread, so no lock guards it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from anyio import CapacityLimiter, to_thread
from starlette.requests import Request
from starlette.types import Scope

from goshen.errors import RateLimitedError

T = TypeVar("T")
RETRY_AFTER_SECONDS = 1
# Threads for the hot reads, apart from the shared pool; each read takes milliseconds, and the
# read-only engine's pool (5 connections, 10 more on demand) holds as many connections.
HOT_READ_THREADS = 15
# Where a request's way to give back its slot waits for `end_in_flight`.
_RELEASE_FIELD = "goshen.in_flight_release"


class AccountsInFlight:
    """Requests in progress per account (user id) in this process, at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def count(self, user_id: str) -> int:
        return self._counts.get(user_id, 0)

    def enter(self, user_id: str) -> Callable[[], None]:
        """Take a slot for one request of this account, or raise RateLimitedError (429) when it
        has `limit` in progress; returns what gives the slot back (once, however often called)."""
        held = self._counts.get(user_id, 0)
        if held >= self.limit:
            raise RateLimitedError(
                f"this account has {held} requests in progress in this API process, the most "
                "it may have at once (GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT); wait for an "
                f"answer before sending more, or try again in {RETRY_AFTER_SECONDS} s",
                retry_after_seconds=RETRY_AFTER_SECONDS,
            )
        self._counts[user_id] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._counts[user_id] - 1
            if left:
                self._counts[user_id] = left
            else:
                del self._counts[user_id]  # the dict holds only accounts with requests in progress

        return release


class TurnsPerAccount:
    """One at a time per account, waiting on the event loop: for work that would only queue on
    the account's row lock in the database, holding a thread (and the GIL at times) meanwhile."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # user id: (lock, its users)

    @asynccontextmanager
    async def turn(self, user_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(user_id) or (asyncio.Lock(), 0)
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[user_id]
            if users > 1:
                self._locks[user_id] = (lock, users - 1)
            else:
                del self._locks[user_id]  # only accounts with work waiting or running stay


@dataclass(frozen=True)
class Lanes:
    """One app's in-flight counts, its submissions' turns, and the threads its hot reads run on."""

    in_flight: AccountsInFlight
    submissions: TurnsPerAccount
    hot_reads: CapacityLimiter

    @classmethod
    def build(cls, max_in_flight_per_account: int) -> Lanes:
        """An app's lanes; built on its event loop (the limiter belongs to the loop)."""
        return cls(
            AccountsInFlight(max_in_flight_per_account),
            TurnsPerAccount(),
            CapacityLimiter(HOT_READ_THREADS),
        )

    async def read(self, read: Callable[[], T]) -> T:
        """Run a hot read's blocking part on the hot-read threads, not the shared pool."""
        return await to_thread.run_sync(read, limiter=self.hot_reads)


def hold_in_flight(scope: Scope, in_flight: AccountsInFlight, user_id: str) -> Callable[[], None]:
    """Take the request's slot (RateLimitedError beyond the bound); returns what gives it back,
    which `end_in_flight` may also call, earlier (it gives the slot back once either way)."""
    release = in_flight.enter(user_id)
    scope[_RELEASE_FIELD] = release
    return release


def end_in_flight(request: Request) -> None:
    """Give back the request's slot before it waits without a thread (a long poll): waiting
    holds none of the capacity the bound protects."""
    release = request.scope.pop(_RELEASE_FIELD, None)
    if release is not None:
        release()
