"""One webhook attempt: a signed POST under one deadline for everything it does.

GOSHEN_WEBHOOK_TIMEOUT_SECONDS bounds the whole attempt — the URL check's DNS lookup, connect,
TLS, the request, the answer's headers and its bounded body — on the wall clock. A per-read
timeout alone is defeated by a receiver that sends a byte just before each read would time out;
here the attempt is cancelled at its deadline (`asyncio.timeout`), wherever it is, and counts as
a failure.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime

import certifi
import httpx

from goshen.config import Settings
from serving.webhooks.signing import signature_headers
from serving.webhooks.url_guard import WebhookTarget, WebhookUrlRefused, resolve_webhook_url

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "Goshen-Webhooks/1"
# Starts last_error of a delivery ended by a permanent refusal (metrics count them by it).
NOT_RETRIED = "not retried: "


@dataclass(frozen=True)
class ClaimedDelivery:
    """One attempt this dispatcher owns: what to send, where, and with which key."""

    id: str
    event_id: str
    url: str
    body: bytes
    attempt: int
    secret: str
    # The job's, and the request that submitted it: the attempt's log lines and span join them.
    job_id: str | None = None
    request_id: str | None = None
    traceparent: str | None = None

    @property
    def receiver(self) -> str:
        return receiver_key(self.url)

    @property
    def span_attributes(self) -> dict[str, str | int]:
        """What its `goshen.deliver` span says about it (goshen.tracing)."""
        attributes: dict[str, str | int] = {
            "goshen.webhook_event_id": self.event_id,
            "goshen.attempt": self.attempt,
            "server.address": self.receiver,
        }
        if self.job_id is not None:
            attributes["goshen.job_id"] = self.job_id
        return attributes


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    # Retrying cannot help (the URL guard refuses the URL for good): the delivery ends now.
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def span_attributes(self) -> dict[str, bool | int]:
        """What its attempt's span says about the outcome (goshen.tracing)."""
        attributes: dict[str, bool | int] = {"goshen.delivered": self.delivered}
        if self.status_code is not None:
            attributes["http.response.status_code"] = self.status_code
        return attributes


def receiver_key(url: str) -> str:
    """Who receives `url`: scheme, host and port (what the per-receiver limit counts)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme}://{parsed.host}:{port}"


def tls_context() -> ssl.SSLContext:
    """What httpx verifies with by default (certifi's CA bundle), loaded once per bundle: loading
    it costs about 70 ms of CPU, which, once per attempt, held a dispatcher to about 14
    deliveries a second."""
    return _tls_context(certifi.where())


@functools.cache
def _tls_context(ca_bundle: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_bundle)


def timed_out(settings: Settings) -> AttemptResult:
    limit = settings.webhook_timeout_seconds
    why = f"the attempt took longer than GOSHEN_WEBHOOK_TIMEOUT_SECONDS ({limit:g} s)"
    return AttemptResult(None, f"timed out: {why}")


async def post_delivery(
    claim: ClaimedDelivery, settings: Settings, *, at: datetime
) -> AttemptResult:
    """One signed POST to the address the URL guard passed just now, all of it within
    GOSHEN_WEBHOOK_TIMEOUT_SECONDS; never raises for HTTP or for the deadline."""
    try:
        async with asyncio.timeout(settings.webhook_timeout_seconds):
            return await _post(claim, settings, at)
    except TimeoutError:
        return timed_out(settings)


async def _post(claim: ClaimedDelivery, settings: Settings, at: datetime) -> AttemptResult:
    try:
        # getaddrinfo blocks: in a thread, abandoned (not waited for) at the deadline.
        target = await asyncio.to_thread(
            resolve_webhook_url, claim.url, allow_loopback=settings.webhook_allow_loopback
        )
    except WebhookUrlRefused as refused:
        if refused.permanent:
            return AttemptResult(None, NOT_RETRIED + str(refused), permanent=True)
        return AttemptResult(None, str(refused))
    # A client per attempt: no pooled connection, verified for one name, is reused for another.
    client = httpx.AsyncClient(
        follow_redirects=False,
        timeout=settings.webhook_timeout_seconds,
        trust_env=False,
        verify=tls_context(),
    )
    try:
        async with client, _stream(client, target, claim, at) as response:
            head = await _read_bounded(response)
    except httpx.TimeoutException:
        return timed_out(settings)
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"{type(exc).__name__}: {str(exc) or 'no detail'}")
    return _result(response, head)


def _stream(
    client: httpx.AsyncClient, target: WebhookTarget, claim: ClaimedDelivery, at: datetime
) -> AbstractAsyncContextManager[httpx.Response]:
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signature_headers(claim.secret, claim.event_id, int(at.timestamp()), claim.body),
    }
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
    return client.stream(
        "POST", target.connect_url, content=claim.body, headers=headers, extensions=extensions
    )


async def _read_bounded(response: httpx.Response) -> bytes:
    """At most MAX_RESPONSE_BYTES of the (still encoded) body; the deadline bounds the time."""
    received = bytearray()
    async for chunk in response.aiter_raw():
        received += chunk
        if len(received) >= MAX_RESPONSE_BYTES:
            break
    return bytes(received[:MAX_RESPONSE_BYTES])


def _result(response: httpx.Response, head: bytes) -> AttemptResult:
    status = response.status_code
    if 200 <= status < 300:
        return AttemptResult(status, None)
    if 300 <= status < 400:
        location = response.headers.get("location", "nowhere")
        return AttemptResult(status, f"HTTP {status} redirect to {location} (not followed)")
    snippet = head[:200].decode("utf-8", "replace")
    return AttemptResult(status, f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}")
