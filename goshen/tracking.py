"""The MLflow tracking server: how Goshen runs it, on the embedded default and in production."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from goshen.config import Settings
from goshen.db.engine import normalize_url
from goshen.errors import GoshenError

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_ALL_INTERFACES = ("0.0.0.0", "::")  # noqa: S104 - names, not a bind


def tracking_server_command(settings: Settings) -> list[str]:
    """The `mlflow server` command line; the store URIs travel in its environment instead."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--serve-artifacts",
        "--host",
        settings.host,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        str(settings.mlflow_workers),
        "--allowed-hosts",
        ",".join(allowed_host_patterns(settings)),
        "--cors-allowed-origins",
        ",".join(allowed_origins(settings)),
    ]


def tracking_server_environment(settings: Settings) -> dict[str, str]:
    """Store locations for `mlflow server`, kept off its argv so `ps` never shows a password."""
    return {
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri(settings),
        "MLFLOW_ARTIFACTS_DESTINATION": settings.resolved_mlflow_artifacts_destination,
        # MLflow's server jobs (GenAI scorers, prompt optimization) serve nothing Goshen does, and
        # their consumers are seven more Python processes; an operator may still turn them on.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get(
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"
        ),
    }


def backend_store_uri(settings: Settings) -> str:
    """The backend store URI, with bare postgresql:// pointed at psycopg 3 as everywhere else."""
    uri = settings.resolved_mlflow_backend_store_uri
    if not uri.startswith(("postgresql:", "postgres:")):
        return uri
    return normalize_url(uri).render_as_string(hide_password=False)


def allowed_host_patterns(settings: Settings) -> list[str]:
    """Host headers MLflow accepts: loopback and every name Goshen is configured to use."""
    names = {*_LOOPBACK_NAMES, _tracking_uri_host(settings)}
    if settings.host in _ALL_INTERFACES:
        names |= {socket.gethostname(), socket.getfqdn()}
    else:
        names.add(settings.host)
    patterns = []
    for name in sorted(names):
        # MLflow matches with fnmatch, where "[" opens a character class.
        bracketed = f"[[]{name}]" if ":" in name else name
        patterns += [bracketed, f"{bracketed}:*"]
    return patterns


def allowed_origins(settings: Settings) -> list[str]:
    """Origins allowed to send state-changing requests; MLflow always allows loopback ones."""
    origins = {settings.local_url(settings.mlflow_port)}
    tracking = urlsplit(settings.resolved_mlflow_tracking_uri)
    origins.add(f"{tracking.scheme}://{tracking.netloc}")
    if settings.host not in _ALL_INTERFACES:
        origins.add(f"http://{_bracket(settings.host)}:{settings.mlflow_port}")
    return sorted(origins)


def prepare_local_stores(settings: Settings) -> None:
    """Create the folders of a SQLite backend store and a local artifact destination."""
    backend = settings.resolved_mlflow_backend_store_uri
    if backend.startswith("sqlite:"):
        database = make_url(backend).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    artifacts = settings.resolved_mlflow_artifacts_destination
    scheme = urlsplit(artifacts).scheme
    if scheme in ("", "file"):
        Path(artifacts.removeprefix("file://")).expanduser().mkdir(parents=True, exist_ok=True)


def run_tracking_server(settings: Settings) -> NoReturn:
    """Replace this process with the MLflow tracking server (`goshen mlflow`)."""
    prepare_local_stores(settings)
    command = tracking_server_command(settings)
    env = {**os.environ, **tracking_server_environment(settings)}
    os.execve(command[0], command, env)  # noqa: S606 - a fixed argv, no shell involved


def _tracking_uri_host(settings: Settings) -> str:
    return urlsplit(settings.resolved_mlflow_tracking_uri).hostname or "localhost"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def tracking_server_answers(uri: str) -> bool:
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_tracking_server(settings: Settings, log: Path | None = None) -> Iterator[str]:
    """The tracking server's URI; the embedded one is started for the block if it is down."""
    uri = settings.resolved_mlflow_tracking_uri
    if tracking_server_answers(uri):
        yield uri
        return
    if settings.mlflow_tracking_uri is not None:
        raise GoshenError(f"MLflow does not answer at {uri} (GOSHEN_MLFLOW_TRACKING_URI)")
    prepare_local_stores(settings)
    log = log or settings.home_dir / "logs" / "mlflow.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        server = subprocess.Popen(
            tracking_server_command(settings),
            env={**os.environ, **tracking_server_environment(settings)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_answering(server, uri, settings.startup_timeout_seconds, log)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=settings.shutdown_grace_seconds)


def _wait_until_answering(
    server: subprocess.Popen[bytes], uri: str, timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while not tracking_server_answers(uri):
        if server.poll() is not None:
            raise GoshenError(f"the MLflow server exited with {server.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise GoshenError(f"MLflow did not answer at {uri} within {timeout:.0f} s; see {log}")
        time.sleep(0.5)
