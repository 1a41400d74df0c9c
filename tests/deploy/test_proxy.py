"""deploy/compose/nginx.conf, the proxy in front of the API replicas: it bounds slow and greedy
clients, passes the client's address, and streams server-sent events unbuffered.

No nginx runs here (CI has no Docker): the configuration is parsed into its directives and checked
for what the API relies on, and the event-stream location is matched against the API's own
routes, so a new stream route the location misses fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path

import serving.routes

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "nginx.conf"
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[{};]|[^\s{};]+')


@dataclass
class Directive:
    name: str
    args: list[str]
    children: list[Directive] = field(default_factory=list)

    def all(self, name: str) -> list[Directive]:
        return [child for child in self.children if child.name == name]

    def one(self, name: str) -> Directive:
        (found,) = self.all(name)
        return found

    def value(self, name: str) -> str:
        return " ".join(self.one(name).args)


def parse(text: str) -> Directive:
    """nginx's configuration as a tree of directives (comments dropped, quotes removed)."""
    tokens = TOKEN.findall(re.sub(r"#[^\n]*", "", text))
    root = Directive("main", [])
    stack = [root]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            stack[-1].children.append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            block = Directive(words[0], words[1:])
            stack[-1].children.append(block)
            stack.append(block)
            words = []
        elif token == "}":
            stack.pop()
        else:
            words.append(token.strip("\"'"))
    assert len(stack) == 1 and not words, "unbalanced nginx.conf"
    return root


HTTP = parse(CONFIG.read_text()).one("http")
SERVER = HTTP.one("server")


def seconds(value: str) -> float:
    """An nginx time (`10s`, `1h`, `500ms`, or bare seconds) in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match is not None, f"not an nginx time: {value}"
    number, unit = match.groups()
    return float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit, 1.0)


def event_stream_location() -> Directive:
    (location,) = [loc for loc in SERVER.all("location") if "events" in loc.args[-1]]
    assert location.args[0] == "~", "the event-stream location is a regular expression"
    return location


def test_slow_clients_are_cut_off() -> None:
    assert seconds(HTTP.value("client_header_timeout")) <= 30
    assert seconds(HTTP.value("client_body_timeout")) <= 60
    assert seconds(HTTP.value("send_timeout")) <= 60


def test_connections_and_rates_are_limited_per_client_address() -> None:
    zone = HTTP.one("limit_conn_zone").args
    assert zone[0] == "$binary_remote_addr"
    zone_name = zone[1].split("=")[1].split(":")[0]
    name, limit = SERVER.one("limit_conn").args
    assert name == zone_name and 1 <= int(limit) <= 1024
    assert HTTP.value("limit_conn_status") == "429"
    assert HTTP.one("limit_req_zone").args[0] == "$binary_remote_addr"
    assert HTTP.value("limit_req_status") == "429"


def test_every_proxied_location_passes_the_clients_address() -> None:
    proxied = [loc for loc in SERVER.all("location") if loc.all("proxy_pass")]
    assert len(proxied) >= 2
    for location in proxied:
        headers = {d.args[0]: d.args[1] for d in location.all("proxy_set_header")}
        # Replaced, not appended to: a client cannot slip in an address of its choosing.
        assert headers["X-Forwarded-For"] == "$remote_addr", location.args
        assert headers["X-Forwarded-Proto"] == "$scheme"
        assert location.value("proxy_http_version") == "1.1"


def test_event_streams_are_not_buffered_and_stay_open() -> None:
    location = event_stream_location()
    assert location.value("proxy_buffering") == "off"
    assert seconds(location.value("proxy_read_timeout")) >= 3600


def stream_routes() -> list[str]:
    """The API's paths that answer text/event-stream, from every router in serving.routes."""
    paths = []
    for module_info in pkgutil.iter_modules(serving.routes.__path__):
        module = importlib.import_module(f"serving.routes.{module_info.name}")
        router = getattr(module, "router", None)
        for route in getattr(router, "routes", []):
            answers = getattr(route, "responses", {}).get(200, {}).get("content", {})
            if "text/event-stream" in answers:
                paths.append(route.path)
    return paths


def test_the_event_stream_location_matches_every_stream_route() -> None:
    pattern = re.compile(event_stream_location().args[1])
    streams = stream_routes()
    assert len(streams) >= 3, streams  # jobs' and datasets' events, training jobs' logs
    for path in streams:
        concrete = re.sub(r"\{[^}]+\}", "job_01HZX3", path)
        assert pattern.search(concrete), f"{path} would be buffered by the proxy"
    assert not pattern.search("/v1/jobs/job_01HZX3")


def test_upstream_follows_the_api_replicas() -> None:
    upstream = HTTP.one("upstream")
    server = upstream.one("server").args
    assert server[0] == "api:8000" and "resolve" in server[1:]
    assert HTTP.one("resolver").args[0] == "127.0.0.11"  # Docker's DNS
    for location in SERVER.all("location"):
        if location.all("proxy_pass"):
            assert location.value("proxy_pass") == f"http://{upstream.args[0]}", location.args
