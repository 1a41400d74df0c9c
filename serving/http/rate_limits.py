"""Rate limits per API key and route class, and on failed authentications per client address,
counted with the `limits` library in fixed windows (goshen.billing.rate_limits has the policies).

Where the counts live:
- in this process's memory by default (one API process: the embedded setup), in LoopMemoryStorage
  counted as `limits`' fixed-window strategy counts, under the keys it builds (each built once),
  inline on the event loop: a dict lookup, no I/O;
- in Redis when GOSHEN_REDIS_URL is set, through `limits.aio`, so every API process counts against
  the same limits. A Redis that does not answer within GOSHEN_REDIS_TIMEOUT_SECONDS does not take
  the API down: each process falls back to its own memory (the limits then hold per process), logs
  a warning, and tries Redis again after REDIS_RETRY_SECONDS.

Over a limit, a request answers 429 (goshen.errors.RateLimitExceededError) with `Retry-After`,
`RateLimit-Policy` and `RateLimit`; every other answer to an authenticated request carries its
`RateLimit-Policy` (`policy_header`), which costs no count: the remaining count would cost
a read per request (two round trips on Redis), so `RateLimit` comes with the 429 only.

Failed authentications count per client address (`request.client.host`: behind a proxy, the
proxy's, unless uvicorn's `--forwarded-allow-ips` trusts its X-Forwarded-For). Past the limit,
the address's keys that this process has not seen authenticate are refused with 429 unchecked,
so guessing gets nothing more, while keys it has seen authenticate keep working.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter as SharedLimiter
from limits.errors import StorageError
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter as LocalLimiter
from starlette.types import Scope

from goshen.billing.rate_limits import FAILED_AUTH, RouteClass, policies
from goshen.config import Settings
from goshen.errors import RateLimitExceededError

T = TypeVar("T")
log = logging.getLogger(__name__)

# After Redis failed to answer, how long the counts stay in memory before Redis is tried again.
REDIS_RETRY_SECONDS = 5.0
# Most keys remembered as having authenticated (a key's hash each); past it, the memory restarts.
MAX_KNOWN_KEYS = 100_000
# Most storage keys kept per policy for counting in memory (an API key's id or a client address
# each); past it, they are built again as they come.
MAX_LOCAL_KEYS = 100_000
# Where a request's policy waits for `policy_header`.
_POLICY_FIELD = "goshen.rate_limit_policy"
# How often LoopMemoryStorage drops the windows that ended.
SWEEP_SECONDS = 60.0


class LoopMemoryStorage(Storage):
    """Fixed-window counts in a dict, for the one thread of an event loop: no lock, no thread.

    `limits`' own memory storages cost /predict too much: the threaded one starts a thread every
    10 ms while it counts, and each start blocks the event loop until the new thread runs (on a
    busy 2-core machine /predict lost 40 % of its throughput); the asyncio one starts a task that
    sweeps every key at each count. Here a window that ended is dropped when next met, and all
    of them by a sweep at most every SWEEP_SECONDS.
    """

    STORAGE_SCHEME = None  # not one a storage URI names

    def __init__(self) -> None:
        super().__init__()
        self._windows: dict[str, tuple[int, float]] = {}  # key: (count, when the window ends)
        self._next_sweep = time.time() + SWEEP_SECONDS

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        count, ends = self._windows.get(key, (0, 0.0))
        if ends <= now:
            if now >= self._next_sweep:
                self._sweep(now)
            count, ends = 0, now + expiry
        self._windows[key] = (count + amount, ends)
        return count + amount

    def get(self, key: str) -> int:
        count, ends = self._windows.get(key, (0, 0.0))
        return count if ends > time.time() else 0

    def get_expiry(self, key: str) -> float:
        return max(self._windows.get(key, (0, 0.0))[1], time.time())

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        dropped = len(self._windows)
        self._windows.clear()
        return dropped

    def clear(self, key: str) -> None:
        self._windows.pop(key, None)

    def _sweep(self, now: float) -> None:
        self._windows = {key: window for key, window in self._windows.items() if window[1] > now}
        self._next_sweep = now + SWEEP_SECONDS


class RateLimits:
    """The API process's rate limiter: `admit` counts a request against its key's quota, and
    `refuse_address`/`count_failure` limit failed authentications per client address."""

    def __init__(
        self, settings: Settings, on_refusal: Callable[[str], None] = lambda name: None
    ) -> None:
        self.enabled = settings.rate_limits_enabled
        self.on_refusal = on_refusal  # told each refusal's policy name (metrics)
        self.policies = policies(settings)
        self._items = {
            name: RateLimitItemPerSecond(policy.quota, policy.window_seconds, namespace=name)
            for name, policy in self.policies.items()
        }
        self._policy_fields = {
            name: policy.policy_field.encode() for name, policy in self.policies.items()
        }
        self._memory = LoopMemoryStorage()
        self._local = LocalLimiter(self._memory)
        self._local_keys: dict[str, dict[str, str]] = {name: {} for name in self._items}
        self._shared: SharedLimiter | None = None
        if settings.redis_url is not None and self.enabled:
            self._shared = SharedLimiter(_redis_storage(settings))
        self._timeout = settings.redis_timeout_seconds
        self._shared_down_until = 0.0
        self._known_keys: set[str] = set()

    async def admit(self, scope: Scope, key_id: str, route_class: RouteClass) -> None:
        """Count a request of this key; over its route class's quota, RateLimitExceededError."""
        if not self.enabled:
            return
        item = self._items[route_class]
        if self._shared is None:  # the embedded setup: not even `_hit`'s coroutine per request
            admitted = self._hit_locally(item, key_id)
        else:
            admitted = await self._hit(item, key_id)
        if not admitted:
            await self._refuse(item, key_id)
        scope[_POLICY_FIELD] = self._policy_fields[route_class]

    async def refuse_address(self, address: str, key_hash: str) -> None:
        """Refuse to check a key (RateLimitExceededError) from an address past its failed
        authentications, unless this process has seen that key authenticate."""
        if not self.enabled or key_hash in self._known_keys:
            return
        item = self._items[FAILED_AUTH]
        if not await self._test(item, address):
            await self._refuse(item, address)

    async def count_failure(self, address: str) -> None:
        """Count a failed authentication from this address."""
        if self.enabled:
            await self._hit(self._items[FAILED_AUTH], address)

    def remember(self, key_hash: str) -> None:
        """Note a key that authenticated, so its address's failures never refuse it."""
        if len(self._known_keys) >= MAX_KNOWN_KEYS:
            self._known_keys.clear()  # rare; a key is remembered again at its next lookup
        self._known_keys.add(key_hash)

    async def _refuse(self, item: RateLimitItem, identifier: str) -> None:
        """Raise RateLimitExceededError, saying when the window over its quota ends."""
        window = await self._on_shared(
            lambda shared: shared.get_window_stats(item, identifier),
            lambda: self._local.get_window_stats(item, identifier),
        )
        policy = self.policies[item.namespace]
        self.on_refusal(policy.name)
        retry_after = min(max(1, math.ceil(window.reset_time - time.time())), item.get_expiry())
        counted = (
            "failed authentications from this address"
            if item.namespace == FAILED_AUTH
            else ("requests with this API key")
        )
        raise RateLimitExceededError(
            f"too many {counted}: the '{policy.name}' rate limit allows {policy.quota} per "
            f"{policy.window_seconds} s; try again in {retry_after} s",
            retry_after_seconds=retry_after,
            policy=policy.name,
            quota=policy.quota,
            window=policy.window_seconds,
        )

    async def _hit(self, item: RateLimitItem, identifier: str) -> bool:
        if self._shared is None:  # the embedded setup: no closure per count
            return self._hit_locally(item, identifier)
        return await self._on_shared(
            lambda shared: shared.hit(item, identifier),
            lambda: self._hit_locally(item, identifier),
        )

    async def _test(self, item: RateLimitItem, identifier: str) -> bool:
        return await self._on_shared(
            lambda shared: shared.test(item, identifier),
            lambda: self._test_locally(item, identifier),
        )

    def _hit_locally(self, item: RateLimitItem, identifier: str) -> bool:
        """`limits`' FixedWindowRateLimiter.hit in this process's memory, less the storage key it
        builds at every count (the largest cost of counting a /predict request)."""
        count = self._memory.incr(self._local_key(item, identifier), item.get_expiry())
        return count <= item.amount

    def _test_locally(self, item: RateLimitItem, identifier: str) -> bool:
        """`limits`' FixedWindowRateLimiter.test in this process's memory, with the kept key."""
        return self._memory.get(self._local_key(item, identifier)) < item.amount

    def _local_key(self, item: RateLimitItem, identifier: str) -> str:
        """`item.key_for(identifier)`, built once per identifier, so that the windows counted
        are the ones `limits` counts (and `get_window_stats` reads) under the same key."""
        keys = self._local_keys[item.namespace]
        key = keys.get(identifier)
        if key is None:
            if len(keys) >= MAX_LOCAL_KEYS:
                keys.clear()  # rare; each identifier's key is built again at its next count
            key = keys[identifier] = item.key_for(identifier)
        return key

    async def _on_shared(
        self, shared: Callable[[SharedLimiter], Awaitable[T]], local: Callable[[], T]
    ) -> T:
        """Ask Redis when it is configured and answering, else this process's memory."""
        if self._shared is None or time.monotonic() < self._shared_down_until:
            return local()
        try:
            async with asyncio.timeout(self._timeout):
                answer = await shared(self._shared)
        except (StorageError, TimeoutError) as exc:
            self._shared_down_until = time.monotonic() + REDIS_RETRY_SECONDS
            log.warning(
                "Redis (GOSHEN_REDIS_URL) did not answer within %s s (%s): rate limits are "
                "counted in this process's memory for %s s, then Redis is tried again",
                self._timeout,
                exc.__cause__ or type(exc).__name__,
                REDIS_RETRY_SECONDS,
            )
            return local()
        if self._shared_down_until:
            self._shared_down_until = 0.0
            log.info("Redis (GOSHEN_REDIS_URL) answers again: rate limits are shared again")
        return answer


def _redis_storage(settings: Settings) -> RedisStorage:
    """Redis through redis-py's asyncio client, with short timeouts (a slow Redis must not slow
    every request) and a key prefix of its own (several installs may share one Redis)."""
    assert settings.redis_url is not None
    url = settings.redis_url
    uri = (
        "async+redis+unix://" + url.removeprefix("unix://")
        if url.startswith("unix://")
        else (f"async+{url}")
    )
    return RedisStorage(
        uri,
        wrap_exceptions=True,
        implementation="redispy",
        key_prefix=f"{settings.redis_key_prefix}:ratelimit",
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
    )


def policy_header(scope: Scope) -> tuple[bytes, bytes] | None:
    """The `RateLimit-Policy` header for the answer to a request that `admit` counted (the
    API's edge adds it), else None."""
    field = scope.get(_POLICY_FIELD)
    return None if field is None else (b"ratelimit-policy", field)
