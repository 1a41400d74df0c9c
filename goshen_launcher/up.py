"""`goshen up`: start every service, wait until each one answers, and stop them all together."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

from goshen.config import Settings
from goshen.dagster_runs import prepare_dagster_home
from goshen.tracking import prepare_local_stores
from goshen_launcher.ports import check_ports_free
from goshen_launcher.readiness import wait_until_ready
from goshen_launcher.services import (
    WORKSPACE_FILE,
    Service,
    child_environment,
    dagster_instance_migration,
    logs_dir,
    platform_services,
    service_urls,
)
from goshen_launcher.supervisor import POLL_SECONDS, PlatformError, Supervisor, log_tail


def run_platform(settings: Settings, on_ready: Callable[[], None] | None = None) -> int:
    """Run the whole platform until Ctrl-C or SIGTERM; the exit status of `goshen up`.

    `on_ready` runs once every service answers (the demo's walkthrough); if it raises, the
    platform stops and the exit status is 1.
    """
    # Health probes run every half second; httpx would log each one at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        services = platform_services(settings)
        check_ports_free(settings.host, services)
    except PlatformError as exc:
        print(f"goshen: {exc}", file=sys.stderr)
        return 2
    supervisor = Supervisor(
        env=child_environment(settings),
        cwd=settings.home_dir,
        logs=logs_dir(settings),
        grace_seconds=settings.shutdown_grace_seconds,
    )
    try:
        _prepare(settings, supervisor)
    except PlatformError as exc:
        _report(exc)
        return 1
    return _supervise(supervisor, services, settings, on_ready)


def _supervise(
    supervisor: Supervisor,
    services: list[Service],
    settings: Settings,
    on_ready: Callable[[], None] | None,
) -> int:
    with supervisor.handling_signals():
        try:
            print(f"goshen: starting {', '.join(s.name for s in services)}", flush=True)
            for service in services:
                supervisor.start(service)
            ready = wait_until_ready(supervisor, settings)
            if ready and (on_ready is None or _run_on_ready(supervisor, on_ready)):
                _print_banner(settings)
                supervisor.wait_while_running()
        except PlatformError as exc:
            _report(exc)
            return 1
        finally:
            if supervisor.running:
                print("goshen: stopping every service", flush=True)
            supervisor.stop_all()
    print("goshen: stopped", flush=True)
    return 0


def _prepare(settings: Settings, supervisor: Supervisor) -> None:
    """Make folders and bring every schema up to date before any service needs them."""
    # Imported here so the port check answers before the database code loads.
    from sqlalchemy.exc import SQLAlchemyError

    from goshen.db import migrate

    if not WORKSPACE_FILE.exists():
        raise PlatformError(f"the Dagster workspace file {WORKSPACE_FILE} is missing")
    logs_dir(settings).mkdir(parents=True, exist_ok=True)
    prepare_dagster_home(settings)
    prepare_local_stores(settings)
    try:
        # Once, here: children starting together would otherwise race on the first migration.
        migrate.upgrade(settings.resolved_database_url)
    except SQLAlchemyError as exc:
        first_line = str(exc).splitlines()[0]
        raise PlatformError(
            f"cannot bring the platform database schema up to date: {first_line}"
        ) from exc
    supervisor.run_step(dagster_instance_migration(settings), settings.startup_timeout_seconds)


def _run_on_ready(supervisor: Supervisor, on_ready: Callable[[], None]) -> bool:
    """Run `on_ready` beside the services; False if asked to stop before it finished.

    It runs in a thread, so a Ctrl-C or a service that dies stops the wait at once (the demo's
    walkthrough can spend minutes training models).
    """
    failure: list[Exception] = []

    def run() -> None:
        try:
            on_ready()
        except Exception as exc:  # noqa: BLE001 - any failure stops the platform, with its reason
            failure.append(exc)

    thread = threading.Thread(target=run, name="on-ready", daemon=True)
    thread.start()
    while thread.is_alive():
        if supervisor.stop_signal is not None:
            return False
        supervisor.check_alive()
        thread.join(POLL_SECONDS)
    if failure:
        exc = failure[0]
        raise PlatformError(f"the platform is up, but {exc.__class__.__name__}: {exc}") from exc
    return True


def _print_banner(settings: Settings) -> None:
    rows = service_urls(settings)
    width = max(len(label) for label, _ in rows)
    lines = ["", "Goshen is up:", *(f"  {label:<{width}}  {url}" for label, url in rows)]
    print("\n".join([*lines, "", "Press Ctrl-C to stop."]), flush=True)


def _report(exc: PlatformError) -> None:
    print(f"goshen: {exc}", file=sys.stderr)
    for log_path in exc.logs:
        print(f"--- last lines of {log_path} ---", file=sys.stderr)
        for line in log_tail(log_path):
            print(f"    {line}", file=sys.stderr)
    sys.stderr.flush()
