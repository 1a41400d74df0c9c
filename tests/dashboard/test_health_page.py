"""The health page shows what the API reports: all healthy, a failing dependency, the API down.

The healthy case runs against the real API (uvicorn serving `serving.app:create_app` in a
subprocess, so the dashboard is exercised exactly as `goshen up` runs it). A real API cannot be made
to lose its database from outside without reaching into its internals, so the failing-dependency
case uses a stand-in HTTP server that answers /healthz and /readyz with the API's documented shapes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.fixtures.servers import wait_until_answers

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
DATABASE_DOWN = {
    "status": "unavailable",
    "checks": {
        "database": {"ok": False, "error": "database unreachable: connection refused"},
        "storage": {"ok": True, "error": None},
        "registry": {"ok": True, "error": None},
        "models": {"ok": True, "error": None, "models": [], "deploying": []},
    },
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def real_api(tmp_path: Path, mlflow_server: str) -> Iterator[int]:
    port = _free_port()
    env = {
        **os.environ,
        "GOSHEN_HOME": str(tmp_path / "api"),
        "GOSHEN_API_PORT": str(port),
        "GOSHEN_MLFLOW_TRACKING_URI": mlflow_server,
    }
    command = [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/readyz", process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)


class _DatabaseDownHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = (200, {"status": "ok"}) if self.path == "/healthz" else (503, DATABASE_DOWN)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def api_without_database() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DatabaseDownHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_page(port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    monkeypatch.setenv("GOSHEN_HOME", str(tmp_path / "dashboard"))
    monkeypatch.setenv("GOSHEN_API_PORT", str(port))
    # Health needs no sign-in: it reads only the API's public probes.
    app = AppTest.from_file(str(APP), default_timeout=30).switch_page("views/health.py").run()
    assert not app.exception, app.exception
    return app


def _texts(elements: object) -> str:
    return "\n".join(element.value for element in elements)  # type: ignore[attr-defined]


def test_all_components_healthy_through_the_real_api(
    real_api: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = _run_page(real_api, monkeypatch, tmp_path)

    assert [element.value for element in app.success] == ["All components are healthy."]
    assert not app.error
    markdown = _texts(app.markdown)
    assert "**API**] — OK" in markdown
    for component in ("Database", "Storage", "Registry", "Models"):
        assert f"**{component}**] — OK" in markdown
    assert f"http://127.0.0.1:{real_api}" in _texts(app.caption)


def test_a_failing_database_is_shown_with_its_error(
    api_without_database: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = _run_page(api_without_database, monkeypatch, tmp_path)

    assert [element.value for element in app.error] == ["Failing: Database."]
    markdown = _texts(app.markdown)
    assert "**API**] — OK" in markdown
    assert "**Database**] — failed" in markdown
    assert "database unreachable: connection refused" in _texts(app.code)


def test_an_api_that_does_not_answer_is_shown_as_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = _run_page(_free_port(), monkeypatch, tmp_path)

    assert [element.value for element in app.error] == ["Failing: API."]
    assert "**API**] — failed" in _texts(app.markdown)
    assert "cannot reach http://127.0.0.1:" in _texts(app.code)
    assert "Checked " in _texts(app.caption)
