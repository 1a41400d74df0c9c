"""The webhook URL guard: loopback and private addresses refused in any spelling, malformed URLs
told what to fix, and a name refused when any address it resolves to is."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from goshen.errors import InvalidInputError
from serving.webhooks.url_guard import address_refusal, check_webhook_url
from tests.serving.webhooks.factories import fake_dns

# The URL guard

LOOPBACK_SPELLINGS = [
    "http://127.0.0.1/hook",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://0177.1/",
    "http://017700000001/",
    "http://127.0.0.1./",
    "http://127.255.255.254:9000/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]:8080/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://localhost/",
    "http://LOCALHOST./",
    "https://localhost:8443/hook",
]
ALWAYS_REFUSED = {
    "http://0.0.0.0/": "unspecified",
    "http://0/": "unspecified",
    "http://[::]/": "unspecified",
    "http://10.0.0.1/": "private",
    "http://012.1/": "private",
    "http://172.16.0.1/": "private",
    "http://192.168.1.1/": "private",
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://2852039166/": "link-local",
    "http://0xa9.0xfe.0xa9.0xfe/": "link-local",
    "http://100.64.0.1/": "CGNAT",
    "http://192.0.2.1/": "documentation",
    "http://198.51.100.7/": "documentation",
    "http://224.0.0.1/": "multicast",
    "http://255.255.255.255/": "reserved",
    "http://240.0.0.1/": "reserved",
    "http://[fe80::1]/": "link-local",
    "http://[fc00::1]/": "unique-local",
    "http://[fd12:3456:789a::1]/": "unique-local",
    "http://[fec0::1]/": "site-local",
    "http://[ff02::1]/": "multicast",
    "http://[2001:db8::1]/": "documentation",
    "http://[::ffff:10.0.0.1]/": "private",
    "http://[::ffff:a9fe:a9fe]/": "link-local",
    "http://[::127.0.0.1]/": "reserved",
    "http://[2002:a9fe:a9fe::1]/": "6to4",
    "http://[2002:7f00:1::1]/": "6to4",
    "http://[64:ff9b::a9fe:a9fe]/": "NAT64",
    "http://[64:ff9b::127.0.0.1]/": "NAT64",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/": "Teredo",
    "http://[fe80::1%25eth0]/": "zone",
}
PUBLIC = [
    "http://8.8.8.8/hook",
    "https://1.1.1.1:8443/x?y=1",
    "http://134744072/",
    "http://[2606:4700:4700::1111]/",
    "http://[::ffff:8.8.8.8]/",
    "http://[2002:808:808::1]/",
]
MALFORMED = {
    "ftp://8.8.8.8/": "http",
    "file:///etc/passwd": "http",
    "javascript:alert(1)": "http",
    "http:///nohost": "host",
    "http://user:pw@8.8.8.8/": "password",
    "http://8.8.8.8:99999/": "port",
    "http://1.2.3.4.5/": "IPv4",
    "http://08.0.0.1/": "IPv4",
    "http://0177.0.0.1/": "IPv4",  # a dotted quad with leading zeros is ambiguous: refused
    "http://exa mple.com/": "host name",
    "http://[::1/": "parse",
    "http://8.8.8.8/" + "a" * 2048: "2048",
}


def _refusal(url: str, *, allow_loopback: bool) -> str:
    with pytest.raises(InvalidInputError) as refused:
        check_webhook_url(url, allow_loopback=allow_loopback)
    assert refused.value.field == "webhook"
    return str(refused.value)


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS)
def test_loopback_in_any_spelling_is_refused_unless_allowed(url: str) -> None:
    message = _refusal(url, allow_loopback=False)
    assert "loopback" in message and "public" in message
    check_webhook_url(url, allow_loopback=True)


@pytest.mark.parametrize(("url", "reason"), ALWAYS_REFUSED.items())
def test_other_private_addresses_are_refused_even_with_loopback_allowed(
    url: str, reason: str
) -> None:
    for allow_loopback in (False, True):
        assert reason in _refusal(url, allow_loopback=allow_loopback)


@pytest.mark.parametrize("url", PUBLIC)
def test_public_addresses_pass(url: str) -> None:
    check_webhook_url(url, allow_loopback=False)


@pytest.mark.parametrize(("url", "reason"), MALFORMED.items())
def test_malformed_urls_say_what_to_fix(url: str, reason: str) -> None:
    assert reason in _refusal(url, allow_loopback=True)


def test_the_address_policy_on_addresses() -> None:
    ip = ipaddress.ip_address
    assert address_refusal(ip("93.184.215.14")) is None
    assert address_refusal(ip("2a00:1450:4001::200e")) is None
    assert address_refusal(ip("127.0.0.1")) == "a loopback address"
    assert address_refusal(ip("127.0.0.1"), allow_loopback=True) is None
    assert address_refusal(ip("::1"), allow_loopback=True) is None
    assert address_refusal(ip("::ffff:127.0.0.1"), allow_loopback=True) is None
    for address in ("10.1.2.3", "100.100.0.1", "169.254.0.1", "0.0.0.0", "fc00::1", "::"):  # noqa: S104
        assert address_refusal(ip(address), allow_loopback=True) is not None
    assert "NAT64" in (address_refusal(ip("64:ff9b::7f00:1"), allow_loopback=True) or "")


def test_a_name_is_refused_when_any_of_its_addresses_is_private(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, "hooks.example.com", ("93.184.215.14", "10.0.0.7"))
    assert "10.0.0.7, a private address" in _refusal(
        "https://hooks.example.com/in", allow_loopback=True
    )
    fake_dns(monkeypatch, "ok.example.com", ("93.184.215.14", "2606:2800:21f:cb07::1"))
    check_webhook_url("https://ok.example.com/in", allow_loopback=False)


def test_localhost_names_are_refused_without_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = fake_dns(monkeypatch, "app.localhost", ("93.184.215.14",))
    assert "names a loopback address" in _refusal("http://app.localhost/", allow_loopback=False)
    assert lookups == []


def test_a_name_that_does_not_resolve_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(*_: Any, **__: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert "does not resolve" in _refusal("https://nowhere.example/", allow_loopback=False)
