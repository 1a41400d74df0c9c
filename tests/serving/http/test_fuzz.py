"""Every route of the OpenAPI document, sent what careless clients and attackers send: NUL bytes
and other control characters, lone surrogates, 10,000-deep JSON, numbers past every limit and
over-long fields, in the path, the query and the body. None may answer 5xx, every refusal is
problem+json, and the keep-alive connection still answers the next request.

Against a real uvicorn on each backend (PostgreSQL refuses NUL in text, SQLite stores it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from goshen.config import Settings
from tests.fixtures.accounts import Account

pytestmark = pytest.mark.slow

NASTY_TEXT = [
    "a\x00b",
    "\x00",
    "a\x01\x08\x1b\x7fb",
    "line\r\nbreak",
    "\ud800",  # a lone surrogate: valid as a JSON escape, not encodable as UTF-8
    "\u202e\ufeff\u0000",
    "x" * 100_000,
]
NASTY_SEGMENTS = [
    "%00",
    "job_%00",
    "%01%1F",
    "%FF%FE",
    "x" * 5_000,
    "..%2F..%2Fetc",
    "%F0%9F%98%80",
]
# Percent-encoded as sent: NUL, control characters, a lone surrogate and bytes that are not UTF-8.
NASTY_QUERY = [
    "%00",
    "a%00b",
    "%01%7F",
    "%ED%A0%80",
    "%FF%FE",
    "9" * 5_000,
    "-1",
    "1e400",
    "x" * 10_000,
]
NASTY_NUMBERS = ["9" * 5_000, "1e400", "-1e400", str(2**64), "-" + str(2**63 + 1), "NaN"]
DEEP = 10_000
MAX_URL_CHARACTERS = 60_000
# Headers the routes read, and the key itself, past every length and format (h11 sends no
# control characters in a header, so neither can a client through a proxy).
NASTY_HEADERS = [
    {"Idempotency-Key": "x" * 8_000},
    {"Idempotency-Key": "%00"},
    {"Last-Event-ID": "9" * 5_000},
    {"Last-Event-ID": "-1"},
    {"Last-Event-ID": "1e400"},
    {"Prefer": "wait=" + "9" * 5_000},
    {"Authorization": "Bearer " + "x" * 8_000},
    {"Authorization": "Bearer gsk_%00"},
    {"Authorization": "Basic Zm9vOmJhcg=="},
]


def _deep_bodies() -> list[bytes]:
    return [
        ("[" * DEEP + "]" * DEEP).encode(),
        ('{"a":' * DEEP + "1" + "}" * DEEP).encode(),
    ]


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def _fill(path: str, segment: str) -> str:
    return re.sub(r"\{[^}]+\}", segment, path)


def _well_formed(path: str, operation: dict[str, Any]) -> str:
    """The path with well-formed values that name nothing, so that the body gets read."""
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "path":
            continue
        kind = re.match(r"\^([a-z]+)_", parameter["schema"].get("pattern", ""))
        value = f"{kind.group(1)}_{'0' * 26}" if kind else "no-such-model"
        path = path.replace(f"{{{parameter['name']}}}", value)
    return path


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = document
    for part in ref.removeprefix("#/").split("/"):
        resolved = resolved[part]
    return resolved


def _json_bodies(document: dict[str, Any], operation: dict[str, Any]) -> Iterator[bytes]:
    """Deep JSON, then bodies setting each property of the schema to each nasty value."""
    yield from _deep_bodies()
    content = operation.get("requestBody", {}).get("content", {})
    schema = _resolve(document, content.get("application/json", {}).get("schema", {}))
    names = list(schema.get("properties", {})) or ["x"]
    for name in names:
        for text in NASTY_TEXT:
            yield json.dumps({**_base(document, schema), name: text}).encode()
        for number in NASTY_NUMBERS:
            yield f'{{"{name}": {number}}}'.encode()
        yield json.dumps({name: {"nested": ["\x00"] * 3, "deep": [[[[["\x00"]]]]]}}).encode()


def _base(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Plausible values for the required properties, so the nasty one is what gets checked."""
    base: dict[str, Any] = {}
    for name in schema.get("required", []):
        field = _resolve(document, schema["properties"].get(name, {}))
        base[name] = {"integer": 1, "number": 1.0, "boolean": True, "object": {}}.get(
            field.get("type", "string"), "digits-diffusion"
        )
    return base


def _multipart_fields(operation: dict[str, Any]) -> list[str]:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("multipart/form-data", {}).get("schema", {})
    return [name for name in schema.get("properties", {}) if name != "file"]


def _check(response: httpx.Response, what: str, http: httpx.Client) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        media_type = response.headers.get("content-type", "")
        assert media_type.startswith("application/problem+json"), f"{what}: {media_type}"
    after = http.get("/healthz")
    assert after.status_code == 200, f"after {what}, the connection answered {after.status_code}"


@pytest.fixture
def http(live_api: Settings, admin: Account) -> Iterator[httpx.Client]:
    """One keep-alive connection to the API, with an admin's key (every route is open to it)."""
    with httpx.Client(
        base_url=f"http://127.0.0.1:{live_api.api_port}", headers=admin.headers, timeout=60
    ) as client:
        yield client


def _queries(url: str, names: list[str], value: str | None) -> list[str]:
    """`url` with `value` in every query parameter at once, or one parameter at a time where
    all at once would pass the longest URL a client sends (httpx: 64 KiB)."""
    if value is None:
        return [url]
    together = url + "?" + "&".join(f"{name}={value}" for name in names)
    if len(together) <= MAX_URL_CHARACTERS:
        return [together]
    return [f"{url}?{name}={value}" for name in names]


def test_no_route_answers_5xx_to_hostile_input(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    sent = 0
    for method, path, operation in _operations(document):
        for segment in NASTY_SEGMENTS if "{" in path else ["-"]:
            url = _fill(path, segment) if "{" in path else path
            query = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            for value in NASTY_QUERY if query else [None]:
                for target in _queries(url, query, value):
                    response = http.request(method, target)
                    _check(response, f"{method} {target[:200]}", http)
                    sent += 1
        url = _well_formed(path, operation)
        for headers in NASTY_HEADERS:
            response = http.request(method, url, headers=headers)
            _check(response, f"{method} {url} with {str(headers)[:80]}", http)
            sent += 1
        if "requestBody" not in operation:
            continue
        fields = _multipart_fields(operation)
        if fields:
            for text in NASTY_TEXT:
                if "\ud800" in text:
                    continue  # not encodable as the UTF-8 a form is sent in
                files = {"file": (f"a{text[:50]}.csv", b"a,b\n1,2\n", "text/csv")}
                response = http.request(method, url, data=dict.fromkeys(fields, text), files=files)
                _check(response, f"{method} {url} multipart {text[:20]!r}", http)
                sent += 1
            continue
        for body in _json_bodies(document, operation):
            headers = {"content-type": "application/json"}
            response = http.request(method, url, content=body, headers=headers)
            _check(response, f"{method} {url} {body[:60]!r}", http)
            sent += 1
    assert sent > 500  # every operation was reached
