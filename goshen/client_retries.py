"""How the SDK retries a request: on 429 and 503 (after their `Retry-After`) and on a lost
connection, with exponential backoff and full jitter. Imports only httpx and the standard library.

Reads (GET, HEAD) are always retried. Anything else is retried only when its caller says the
route honours an `Idempotency-Key` (`idempotent=True`) and the request carries one: the server
then answers a repeat with what the first one did, so a request whose answer was lost cannot act
twice. A key sent to a route that ignores it proves nothing, so a header alone is not enough; a
POST without both is never retried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from goshen.client_errors import retry_after_seconds

RETRIED_STATUSES = frozenset({429, 503})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The request may not have reached the server, or its answer was lost on the way back.
CONNECTION_ERRORS = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.TimeoutException,
)


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_retries` more tries after the first; the k-th waits a random time up to
    min(backoff_cap, backoff_base·2^k) seconds, or the `Retry-After` asked (plus up to
    backoff_base). A `Retry-After` longer than `backoff_cap` is not waited for: the error goes to
    the caller, with its `retry_after`."""

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    draw: Callable[[float, float], float] = random.uniform

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_cap < 0:
            raise ValueError("max_retries, backoff_base and backoff_cap must not be negative")

    def allows(self, method: str, headers: Any, idempotent: bool = False) -> bool:
        """Whether a request may be sent again: a read, or one to a route that honours the
        Idempotency-Key it carries."""
        if self.max_retries == 0:
            return False
        keyed = idempotent and "idempotency-key" in httpx.Headers(headers)
        return method.upper() in SAFE_METHODS or keyed

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 first): full jitter."""
        return self.draw(0.0, min(self.backoff_cap, self.backoff_base * 2**retry))

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `retry` of an answer that may say `Retry-After`;
        None: it asks for longer than `backoff_cap`, so do not retry."""
        if retry_after is None:
            return self.backoff(retry)
        if retry_after > self.backoff_cap:
            return None
        return retry_after + self.draw(0.0, min(self.backoff_base, self.backoff_cap))


def send(
    http: httpx.Client,
    policy: RetryPolicy,
    method: str,
    path: str,
    *,
    idempotent: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """The response to the request, retried as `policy` allows (`idempotent`: the route honours
    the request's Idempotency-Key); the last answer or connection error when retries run out."""
    retryable = policy.allows(method, kwargs.get("headers"), idempotent)
    retry = 0
    while True:
        try:
            outcome: httpx.Response | Exception = http.request(method, path, **kwargs)
        except CONNECTION_ERRORS as exc:
            outcome = exc
        wait = _wait_before_retry(policy, retryable, retry, outcome)
        if wait is None:
            return _answer(outcome)
        policy.sleep(wait)
        retry += 1


async def send_async(
    http: httpx.AsyncClient,
    policy: RetryPolicy,
    method: str,
    path: str,
    *,
    idempotent: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """`send` for an httpx.AsyncClient, waiting with `policy.async_sleep`."""
    retryable = policy.allows(method, kwargs.get("headers"), idempotent)
    retry = 0
    while True:
        try:
            outcome: httpx.Response | Exception = await http.request(method, path, **kwargs)
        except CONNECTION_ERRORS as exc:
            outcome = exc
        wait = _wait_before_retry(policy, retryable, retry, outcome)
        if wait is None:
            return _answer(outcome)
        await policy.async_sleep(wait)
        retry += 1


def _wait_before_retry(
    policy: RetryPolicy, retryable: bool, retry: int, outcome: httpx.Response | Exception
) -> float | None:
    """Seconds to wait before sending the request again; None: the outcome is final."""
    if not retryable or retry >= policy.max_retries:
        return None
    if isinstance(outcome, Exception):
        return policy.backoff(retry)
    if outcome.status_code not in RETRIED_STATUSES:
        return None
    return policy.delay(retry, retry_after_seconds(outcome.headers, _body(outcome)))


def _answer(outcome: httpx.Response | Exception) -> httpx.Response:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _body(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
