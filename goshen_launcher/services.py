"""The services `goshen up` runs on one machine, and how to tell that each one is ready."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from goshen.config import ENV_PREFIX, Settings
from goshen.tracking import tracking_server_command, tracking_server_environment

WORKSPACE_FILE = Path(__file__).resolve().parent.parent / "workspace.yaml"
DAGSTER_CODE_LOCATIONS_QUERY = """
query CodeLocations {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""


class DagsterWorkspaceError(Exception):
    """The Dagster webserver answered, but not with its workspace."""


@dataclass(frozen=True)
class Service:
    """A process `goshen up` runs: a long-running service, or a one-shot step before them."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None
    port_setting: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class CodeLocation:
    """A Dagster code location as the webserver sees it."""

    name: str
    load_status: str
    error: str | None

    @property
    def ready(self) -> bool:
        return self.load_status == "LOADED" and self.error is None


def platform_services(settings: Settings) -> list[Service]:
    """Every service of the embedded platform, in start order."""
    return [
        _api(settings),
        Service(name="worker", argv=(sys.executable, "-m", "goshen_launcher.cli", "worker")),
        Service(name="webhooks", argv=(sys.executable, "-m", "goshen_launcher.cli", "webhooks")),
        _mlflow(settings),
        *_dagster(settings),
        dashboard_service(settings),
    ]


def _api(settings: Settings) -> Service:
    # `goshen api`, not bare uvicorn: on SIGTERM it ends its event streams and stops within the
    # grace period `goshen up` waits. Its host and port reach it with every other setting.
    return Service(
        name="api",
        argv=(sys.executable, "-m", "goshen_launcher.cli", "api"),
        health_url=f"{settings.local_url(settings.api_port)}/healthz",
        port_setting=f"{ENV_PREFIX}API_PORT",
        port=settings.api_port,
    )


def _mlflow(settings: Settings) -> Service:
    return Service(
        name="mlflow",
        argv=tuple(tracking_server_command(settings)),
        env=tracking_server_environment(settings),
        health_url=f"{settings.local_url(settings.mlflow_port)}/health",
        port_setting=f"{ENV_PREFIX}MLFLOW_PORT",
        port=settings.mlflow_port,
    )


def _dagster(settings: Settings) -> list[Service]:
    env = {"DAGSTER_HOME": str(settings.resolved_dagster_home)}
    workspace = str(WORKSPACE_FILE)
    webserver = Service(
        name="dagster-webserver",
        argv=(
            *(_script("dagster-webserver"), "-w", workspace),
            *("-h", settings.host, "-p", str(settings.dagster_port)),
        ),
        env=env,
        health_url=f"{settings.local_url(settings.dagster_port)}/server_info",
        port_setting=f"{ENV_PREFIX}DAGSTER_PORT",
        port=settings.dagster_port,
    )
    daemon = Service(
        name="dagster-daemon", argv=(_script("dagster-daemon"), "run", "-w", workspace), env=env
    )
    return [webserver, daemon]


def dashboard_service(settings: Settings) -> Service:
    """`streamlit run` of the dashboard, headless, on GOSHEN_DASHBOARD_PORT."""
    options = {
        "server.port": str(settings.dashboard_port),
        "server.address": settings.host,
        "server.headless": "true",
        "server.fileWatcherType": "none",
        "client.toolbarMode": "minimal",
        "browser.gatherUsageStats": "false",
    }
    return Service(
        name="dashboard",
        argv=(
            *(sys.executable, "-m", "streamlit", "run", str(dashboard_script())),
            *(part for name, value in options.items() for part in (f"--{name}", value)),
        ),
        health_url=f"{settings.local_url(settings.dashboard_port)}/_stcore/health",
        port_setting=f"{ENV_PREFIX}DASHBOARD_PORT",
        port=settings.dashboard_port,
    )


def dagster_instance_migration(settings: Settings) -> Service:
    """A one-shot step that creates or upgrades the Dagster instance's storage.

    Run before the webserver and daemon start: both would otherwise create the SQLite storage
    at once on a fresh DAGSTER_HOME and one of them fails ("table alembic_version already exists").
    """
    return Service(
        name="dagster-instance",
        argv=(_script("dagster"), "instance", "migrate"),
        env={"DAGSTER_HOME": str(settings.resolved_dagster_home)},
    )


def service_urls(settings: Settings) -> list[tuple[str, str]]:
    """What a person opens: (label, URL or folder) rows for the `goshen up` banner."""
    return [
        ("API", settings.api_url),
        ("API docs", f"{settings.api_url}/docs"),
        ("Dagster", settings.local_url(settings.dagster_port)),
        ("MLflow", settings.local_url(settings.mlflow_port)),
        ("Dashboard", settings.local_url(settings.dashboard_port)),
        ("Logs", str(logs_dir(settings))),
    ]


def child_environment(settings: Settings) -> dict[str, str]:
    """This process's environment plus every setting, resolved, so children agree with it."""
    resolved: dict[str, object] = {
        "home": settings.home_dir,
        "database_url": settings.resolved_database_url,
        "storage_path": settings.artifacts_dir,
        "mlflow_tracking_uri": settings.resolved_mlflow_tracking_uri,
        "mlflow_backend_store_uri": settings.resolved_mlflow_backend_store_uri,
        "mlflow_artifacts_destination": settings.resolved_mlflow_artifacts_destination,
        "dagster_home": settings.resolved_dagster_home,
    }
    env = dict(os.environ)
    for name in type(settings).model_fields:
        value = resolved.get(name, getattr(settings, name))
        if value is not None:
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    # Children write to log files; unbuffered output keeps those logs current.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def logs_dir(settings: Settings) -> Path:
    return settings.home_dir / "logs"


def dashboard_script() -> Path:
    """The Streamlit entry point, found through the installed `dashboard` package."""
    import dashboard

    return Path(dashboard.__file__).parent / "app.py"


def dagster_code_locations(url: str, timeout: float = 5.0) -> dict[str, CodeLocation]:
    """Code locations of the Dagster webserver at `url`, by name, via its GraphQL API."""
    response = httpx.post(
        f"{url.rstrip('/')}/graphql", json={"query": DAGSTER_CODE_LOCATIONS_QUERY}, timeout=timeout
    )
    response.raise_for_status()
    body = response.json()
    if not body.get("data"):
        raise DagsterWorkspaceError(f"Dagster's GraphQL API answered with errors: {body}")
    workspace = body["data"]["workspaceOrError"]
    if workspace["__typename"] != "Workspace":
        raise DagsterWorkspaceError(f"Dagster cannot read its workspace: {workspace['message']}")
    return {entry["name"]: _code_location(entry) for entry in workspace["locationEntries"]}


def _code_location(entry: dict[str, Any]) -> CodeLocation:
    loaded = entry.get("locationOrLoadError") or {}
    error = loaded.get("message") if loaded.get("__typename") == "PythonError" else None
    return CodeLocation(name=entry["name"], load_status=entry["loadStatus"], error=error)


def _script(name: str) -> str:
    """A console script of this environment, so children run the same versions as `goshen`."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    return shutil.which(name) or name
