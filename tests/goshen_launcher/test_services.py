"""What `goshen up` starts: the services' commands, their settings, and Dagster's readiness."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from goshen.config import Settings
from goshen.dagster_runs import prepare_dagster_home
from goshen_launcher.services import (
    child_environment,
    dagster_code_locations,
    platform_services,
)

LOAD_ERROR = {
    "data": {
        "workspaceOrError": {
            "__typename": "Workspace",
            "locationEntries": [
                {
                    "name": "goshen",
                    "loadStatus": "LOADED",
                    "locationOrLoadError": {
                        "__typename": "PythonError",
                        "message": "ModuleNotFoundError: No module named 'torchh'",
                    },
                }
            ],
        }
    }
}


def test_children_resolve_every_setting_as_the_parent_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    parent = Settings(_env_file=None, home=Path("relative-home"), api_port=8123)

    env = child_environment(parent)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings(_env_file=None)

    assert env["GOSHEN_HOME"] == str(tmp_path / "relative-home")
    assert child.home_dir == parent.home_dir
    assert child.resolved_database_url == parent.resolved_database_url
    assert child.artifacts_dir == parent.artifacts_dir
    assert child.resolved_dagster_home == parent.resolved_dagster_home
    assert child.resolved_mlflow_tracking_uri == parent.resolved_mlflow_tracking_uri
    assert child.api_url == "http://127.0.0.1:8123"


def test_every_service_with_a_port_names_its_setting(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path)
    services = {service.name: service for service in platform_services(settings)}

    assert set(services) == {
        "api",
        "worker",
        "webhooks",
        "mlflow",
        "dagster-webserver",
        "dagster-daemon",
        "dashboard",
    }
    assert services["api"].port_setting == "GOSHEN_API_PORT"
    assert services["dashboard"].health_url == "http://127.0.0.1:8501/_stcore/health"
    assert Path(services["dashboard"].argv[4]).name == "app.py"
    assert services["dagster-daemon"].env["DAGSTER_HOME"] == str(tmp_path / "dagster")


def test_dagster_home_gets_an_instance_file_once(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path)
    instance = prepare_dagster_home(settings) / "dagster.yaml"
    assert "enabled: false" in instance.read_text()

    instance.write_text("telemetry:\n  enabled: true\n")
    prepare_dagster_home(settings)

    assert instance.read_text() == "telemetry:\n  enabled: true\n"


class _GraphQLHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        payload = json.dumps(LOAD_ERROR).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def dagster_with_a_broken_location() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GraphQLHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_code_location_that_failed_to_load_carries_its_error(
    dagster_with_a_broken_location: str,
) -> None:
    location = dagster_code_locations(dagster_with_a_broken_location)["goshen"]

    assert location.load_status == "LOADED"
    assert not location.ready
    assert location.error == "ModuleNotFoundError: No module named 'torchh'"
