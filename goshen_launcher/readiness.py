"""Waiting for `goshen up`'s services: health checks and loaded Dagster code locations."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from goshen.config import Settings
from goshen_launcher.services import WORKSPACE_FILE, DagsterWorkspaceError, dagster_code_locations
from goshen_launcher.supervisor import POLL_SECONDS, PlatformError, RunningService, Supervisor

PROBE_TIMEOUT_SECONDS = 2.0


def wait_until_ready(supervisor: Supervisor, settings: Settings) -> bool:
    """Wait for every health check and the Dagster code locations; False if asked to stop."""
    started = time.monotonic()
    deadline = started + settings.startup_timeout_seconds
    pending = [running for running in supervisor.running if running.service.health_url]
    while pending:
        ready = [running for running in pending if _answers(running)]
        for running in ready:
            print(f"goshen: {running.name} is ready after {_elapsed(started)}", flush=True)
        pending = [running for running in pending if running not in ready]
        if not _keep_waiting(supervisor, deadline, pending):
            return False
    webserver = [r for r in supervisor.running if r.name == "dagster-webserver"]
    while not _code_locations_loaded(settings.local_url(settings.dagster_port), webserver):
        if not _keep_waiting(supervisor, deadline, webserver):
            return False
    print(f"goshen: Dagster code locations loaded after {_elapsed(started)}", flush=True)
    # The worker has no port: being alive once everything else answers is its health.
    supervisor.check_alive()
    return True


def _keep_waiting(
    supervisor: Supervisor, deadline: float, pending: Sequence[RunningService]
) -> bool:
    supervisor.check_alive()
    if supervisor.stop_signal is not None:
        return False
    if pending and time.monotonic() > deadline:
        names = ", ".join(running.name for running in pending)
        raise PlatformError(
            f"{names} did not become ready in time (GOSHEN_STARTUP_TIMEOUT_SECONDS)",
            [running.log_path for running in pending],
        )
    if pending:
        time.sleep(POLL_SECONDS)
    return True


def _answers(running: RunningService) -> bool:
    url = running.service.health_url
    try:
        return url is not None and httpx.get(url, timeout=PROBE_TIMEOUT_SECONDS).status_code == 200
    except httpx.HTTPError:
        return False


def _code_locations_loaded(dagster_url: str, webserver: Sequence[RunningService]) -> bool:
    """True once every code location is loaded; a location that failed to load is fatal."""
    logs = [running.log_path for running in webserver]
    try:
        locations = dagster_code_locations(dagster_url, timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError:
        return False
    except DagsterWorkspaceError as exc:
        raise PlatformError(str(exc), logs) from None
    if not locations:
        raise PlatformError(f"{WORKSPACE_FILE} names no Dagster code location")
    for location in locations.values():
        if location.error is not None:
            raise PlatformError(
                f"Dagster could not load code location {location.name!r}: {location.error}", logs
            )
    return all(location.ready for location in locations.values())


def _elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"
