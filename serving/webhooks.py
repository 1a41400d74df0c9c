"""Job webhooks (Standard Webhooks v1): signing secrets, signatures, the URL guard, the outbox.

A job with a `webhook` URL gets one outbox row per (job, event type) in the same transaction that
causes the event; `serving.webhook_delivery` signs and posts them, outside the GPU worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from goshen.db import access
from goshen.db.models import Job, User, WebhookDelivery
from goshen.errors import InvalidInputError
from serving.notifications import WEBHOOKS_CHANNEL, notify

WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
SECRET_PREFIX = "whsec_"  # noqa: S105 - the public marker of a secret, not one
SECRET_BYTES = 32
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookVerificationError(Exception):
    """A delivery's headers or signature do not check out; the message says which."""


# Secrets


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_secret_for(session: Session, user: User) -> str:
    """The user's signing secret, made and stored on first use.

    Concurrent first uses end with one secret: only an UPDATE that still sees NULL writes, and
    everyone re-reads what was stored.
    """
    if user.webhook_secret:
        return user.webhook_secret
    session.execute(
        update(User)
        .where(User.id == user.id, User.webhook_secret.is_(None))
        .values(webhook_secret=new_webhook_secret())
        .execution_options(synchronize_session=False)
    )
    stored = session.scalar(select(User.webhook_secret).where(User.id == user.id))
    assert stored is not None
    set_committed_value(user, "webhook_secret", stored)
    return stored


# Signatures


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 HMAC-SHA256 of `{msg_id}.{timestamp}.{body}` keyed by the decoded secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt of one message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = 300,
    now: datetime | None = None,
) -> None:
    """Check a received delivery; raise WebhookVerificationError unless one v1 signature matches.

    `headers` may use any case; `webhook-signature` may hold several space-separated signatures
    (secret rotation). The timestamp must be within `tolerance_seconds` of `now`.
    """
    received = {name.lower(): value for name, value in headers.items()}
    msg_id = received.get("webhook-id")
    stamp = received.get("webhook-timestamp")
    signatures = received.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not an integer") from None
    current = (now or datetime.now(UTC)).timestamp()
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (replay?)")
    expected = base64.b64decode(sign(secret, msg_id, timestamp, body).removeprefix("v1,"))
    if not any(hmac.compare_digest(expected, given) for given in _v1_signatures(signatures)):
        raise WebhookVerificationError("no webhook-signature matches the body")


def _secret_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from None


def _v1_signatures(header: str) -> list[bytes]:
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue  # a malformed entry is no match; another entry may still be
    return found


# The URL guard (SSRF)

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
LOOPBACK = "a loopback address"
_REFUSED: tuple[tuple[_V4 | _V6, str], ...] = (
    (_V4("0.0.0.0/8"), "an unspecified ('this host') address"),
    (_V4("10.0.0.0/8"), "a private address"),
    (_V4("100.64.0.0/10"), "a shared (CGNAT) address"),
    (_V4("127.0.0.0/8"), LOOPBACK),
    (_V4("169.254.0.0/16"), "a link-local address"),
    (_V4("172.16.0.0/12"), "a private address"),
    (_V4("192.0.0.0/24"), "an IETF protocol address"),
    (_V4("192.0.2.0/24"), "a documentation address"),
    (_V4("192.88.99.0/24"), "a 6to4 relay address"),
    (_V4("192.168.0.0/16"), "a private address"),
    (_V4("198.18.0.0/15"), "a benchmarking address"),
    (_V4("198.51.100.0/24"), "a documentation address"),
    (_V4("203.0.113.0/24"), "a documentation address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V4("240.0.0.0/4"), "a reserved address"),
    (_V6("::/128"), "an unspecified address"),
    (_V6("::1/128"), LOOPBACK),
    (_V6("::/8"), "a reserved address (IPv4-compatible or other)"),
    (_V6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_V6("100::/64"), "a discard-only address"),
    (_V6("2001::/23"), "an IETF protocol address"),
    (_V6("2001:db8::/32"), "a documentation address"),
    (_V6("3fff::/20"), "a documentation address"),
    (_V6("fc00::/7"), "a unique-local (private) address"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fec0::/10"), "a site-local address"),
    (_V6("ff00::/8"), "a multicast address"),
)
_NAT64 = _V6("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def address_refusal(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why a webhook may not connect to `address` (e.g. "a private address"), or None if it may.

    IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by it too.
    `allow_loopback` lets loopback through, and nothing else.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address_refusal(address.ipv4_mapped, allow_loopback=allow_loopback)
        for form, inner in _embedded_ipv4(address):
            # A tunnel or translator never reaches this machine's loopback: judged strictly.
            if reason := address_refusal(inner):
                return f"{form} address of {inner}, {reason}"
    for network, reason in _REFUSED:
        if address.version == network.version and address in network:
            return None if allow_loopback and reason == LOOPBACK else reason
    return None if address.is_global else "not a globally routable address"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    found = []
    if address.sixtofour is not None:
        found.append(("a 6to4", address.sixtofour))
    if address.teredo is not None:
        found += [("a Teredo", inner) for inner in address.teredo]
    if address in _NAT64:
        found.append(("a NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
    return found


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL and the address that passed the check; deliveries connect there."""

    url: httpx.URL
    address: IPAddress

    @property
    def connect_url(self) -> httpx.URL:
        """The URL with its host replaced by the checked address."""
        return self.url.copy_with(host=str(self.address))

    @property
    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")

    @property
    def sni_hostname(self) -> str | None:
        """The name TLS must verify, when the URL names a host rather than an address."""
        host = self.url.raw_host.decode("ascii").rstrip(".")
        return None if _ip_literal(host) is not None else host


def check_webhook_url(url: str, *, allow_loopback: bool) -> None:
    """Refuse (InvalidInputError on `webhook`) a URL that is malformed or reaches a private host."""
    resolve_webhook_url(url, allow_loopback=allow_loopback)


def resolve_webhook_url(url: str, *, allow_loopback: bool) -> WebhookTarget:
    """Check `url` now, resolving its host; the target pins the first address that passed.

    Every resolved address must pass, so a name with one private address is refused.
    """
    parsed = _parse_url(url)
    host = parsed.raw_host.decode("ascii").rstrip(".")
    if not allow_loopback and (host == "localhost" or host.endswith(".localhost")):
        raise _refused(f"{host} names {LOOPBACK}")
    addresses = _addresses(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    for address in addresses:
        if reason := address_refusal(address, allow_loopback=allow_loopback):
            raise _refused(f"{host} resolves to {address}, {reason}")
    return WebhookTarget(parsed, addresses[0])


def _parse_url(url: str) -> httpx.URL:
    if len(url) > MAX_URL_LENGTH:
        raise _refused(f"it is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise _refused(f"it does not parse ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise _refused("only http:// and https:// URLs are delivered to")
    if not parsed.raw_host:
        raise _refused("it has no host")
    if parsed.userinfo:
        raise _refused("it carries a user name or password; put a token in the path instead")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise _refused(f"port {parsed.port} is out of range")
    return parsed


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        literal = _ip_literal(host)
    except ValueError as exc:
        raise _refused(str(exc)) from None
    if literal is not None:
        return [literal]
    if not _NAME.fullmatch(host):
        raise _refused(f"{host!r} is neither a host name nor an IP address")
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _refused(f"its host {host} does not resolve ({exc}); check the name") from None
    addresses = list(dict.fromkeys(_normalized(answer[4][0]) for answer in answers))
    if not addresses:
        raise _refused(f"its host {host} resolves to no address")
    return addresses


def _ip_literal(host: str) -> IPAddress | None:
    """The address a host spells, in any form the C resolver accepts (`127.1`, `0x7f.1`, ...).

    Raises ValueError for a host that looks like an address but is not one.
    """
    if ":" in host:
        if "%" in host:
            raise ValueError(f"{host} carries an IPv6 zone")
        return _normalized(host)
    if not all(_NUMERIC_LABEL.fullmatch(label) for label in host.split(".")):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        raise ValueError(f"{host} is not a valid IPv4 address") from None


def _normalized(text_address: str) -> IPAddress:
    address = ipaddress.ip_address(text_address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # the IPv4 address a mapped one connects to
    return address


def _refused(reason: str) -> InvalidInputError:
    # The URL itself stays out of the message: webhook URLs often carry a token.
    return InvalidInputError(
        f"webhook URL refused: {reason}. Use a public http(s) URL whose host resolves only to "
        "public addresses",
        field="webhook",
    )


# The outbox


def canonical_body(payload: dict[str, Any]) -> bytes:
    """The bytes sent and signed for a payload: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def wanted_events(job: Job) -> tuple[str, ...]:
    """The event types the job's webhook receives (an empty filter means all of them)."""
    return tuple(job.webhook_events or WEBHOOK_EVENTS)


def enqueue_event(session: Session, job: Job, event_type: str, payload: dict[str, Any]) -> bool:
    """Add the job's `event_type` delivery to the outbox once; True if a row was added.

    Runs in the caller's transaction. A job that has no webhook, filters the event out, or
    already has this event (a job run twice) adds nothing.
    """
    if event_type not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event_type!r}; expected one of {WEBHOOK_EVENTS}")
    if not job.webhook or event_type not in wanted_events(job):
        return False
    canonical_body(payload)  # refuse a payload that cannot be sent before it is stored
    added = access.insert_once(
        session,
        WebhookDelivery,
        {"job_id": job.id, "event_type": event_type, "url": job.webhook, "payload": payload},
        ("job_id", "event_type"),
    )
    if added:
        notify(session, WEBHOOKS_CHANNEL)
    return added
