"""A registry that is down: a download fails within its timeout with RegistryUnavailableError
naming the tracking server, whether the server refuses connections, hangs, or answers its health
check but fails the download (where MLflow's own client, unbounded, retries for minutes); a
version that does not exist is still NotFoundError."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest

from goshen import registry
from goshen.errors import NotFoundError

# Generous for a loaded CI machine; unbounded, these take minutes.
SLACK_SECONDS = 30
MLFLOW_CLIENT_VARIABLES = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)


@pytest.fixture
def tracking_uri() -> Iterator[None]:
    """Whatever tracking URI the test points MLflow at is put back afterwards."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def _use(uri: str) -> None:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


@pytest.fixture
def bounded_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """bound_mlflow_client(2) for this test only: the variables it sets are put back after."""
    for name in MLFLOW_CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    registry.bound_mlflow_client(2)


@pytest.fixture
def refusing_uri() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hanging_uri() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


class _FailingMlflow(BaseHTTPRequestHandler):
    """Healthy on /health, INTERNAL_ERROR on every API call (its backend store is down)."""

    def do_GET(self) -> None:
        healthy = self.path.startswith("/health")
        body = b"OK" if healthy else json.dumps({"error_code": "INTERNAL_ERROR"}).encode()
        self.send_response(200 if healthy else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def failing_uri() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("tracking_uri")
def test_a_registry_that_refuses_connections_fails_a_download_at_once(
    refusing_uri: str, tmp_path: Path
) -> None:
    _use(refusing_uri)
    started = time.monotonic()
    with pytest.raises(registry.RegistryUnavailableError) as raised:
        registry.download_version("digits", "1", tmp_path / "digits", timeout=2)
    assert (
        str(raised.value) == f"the MLflow registry at {refusing_uri} does not answer (ConnectError)"
    )
    assert time.monotonic() - started < SLACK_SECONDS
    assert list(tmp_path.iterdir()) == [], "nothing is left behind"


@pytest.mark.usefixtures("tracking_uri")
def test_a_registry_that_hangs_fails_a_download_within_its_timeout(
    hanging_uri: str, tmp_path: Path
) -> None:
    _use(hanging_uri)
    started = time.monotonic()
    with pytest.raises(registry.RegistryUnavailableError, match=f"at {hanging_uri} does not"):
        registry.download_version("digits", "1", tmp_path / "digits", timeout=1)
    assert 1 <= time.monotonic() - started < SLACK_SECONDS


@pytest.mark.usefixtures("tracking_uri", "bounded_client")
def test_a_registry_whose_api_fails_is_unavailable_though_its_health_answers(
    failing_uri: str, tmp_path: Path
) -> None:
    """MLflow answers /health while its own database is gone: the check asks a real query."""
    _use(failing_uri)
    started = time.monotonic()
    with pytest.raises(registry.RegistryUnavailableError) as raised:
        registry.download_version("digits", "1", tmp_path / "digits", timeout=2)
    message = f"the MLflow registry at {failing_uri} answered 500 to registered-models/search"
    assert str(raised.value) == message
    assert "INTERNAL_ERROR" not in str(raised.value)  # what it said goes to the log
    assert time.monotonic() - started < SLACK_SECONDS


def test_the_bound_on_mlflows_client_leaves_an_operators_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in MLFLOW_CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    registry.bound_mlflow_client(2.5)
    assert mlflow.environment_variables.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 4
    assert mlflow.environment_variables.MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 3


def test_a_version_that_does_not_exist_is_still_not_found(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    _use(uri)
    try:
        with pytest.raises(NotFoundError, match="no model nothing version 1"):
            registry.download_version("nothing", "1", tmp_path / "nothing", timeout=10)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
