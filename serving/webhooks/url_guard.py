"""The webhook URL guard (SSRF): URLs that resolve to private, loopback, link-local, multicast
or reserved addresses, in any spelling, are refused at submit and again at every delivery; a
delivery connects to the address that was checked.

A refusal is permanent (a delivery ends at once) unless the host's name does not resolve now:
a DNS outage or a record not yet published passes, so those are retried on the schedule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

import httpx

from goshen.errors import InvalidInputError

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


class WebhookUrlRefused(InvalidInputError):
    """A webhook URL the guard refuses; `permanent` is False only for a name that does not
    resolve now (retrying may succeed), True for everything about the URL or its addresses."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message, field="webhook")
        self.permanent = permanent


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
        reason = f"its host {host} does not resolve ({exc}); check the name"
        raise _refused(reason, permanent=False) from None
    # IPv4 and IPv6 socket addresses start with the address, a str.
    found = [answer[4][0] for answer in answers]
    addresses = list(dict.fromkeys(_normalized(ip) for ip in found if isinstance(ip, str)))
    if not addresses:
        raise _refused(f"its host {host} resolves to no address", permanent=False)
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


def _refused(reason: str, *, permanent: bool = True) -> WebhookUrlRefused:
    # The URL itself stays out of the message: webhook URLs often carry a token.
    return WebhookUrlRefused(
        f"webhook URL refused: {reason}. Use a public http(s) URL whose host resolves only to "
        "public addresses",
        permanent=permanent,
    )
