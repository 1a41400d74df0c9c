"""`goshen up`: start every service, wait until each one answers, and stop them all together."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from types import FrameType
from typing import BinaryIO

import httpx

from goshen.config import ENV_PREFIX, Settings
from goshen.dagster_runs import prepare_dagster_home
from goshen.tracking import prepare_local_stores
from goshen_launcher.services import (
    WORKSPACE_FILE,
    DagsterWorkspaceError,
    Service,
    child_environment,
    dagster_code_locations,
    dagster_instance_migration,
    logs_dir,
    platform_services,
    service_urls,
)

__all__ = ["Service", "Supervisor", "run_platform"]

POLL_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 2.0
LOG_TAIL_LINES = 20
LOG_MARKER = "===== goshen up:"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class PlatformError(Exception):
    """`goshen up` cannot go on; the message says what failed, the logs say why."""

    def __init__(self, message: str, logs: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.logs = list(logs)


@dataclass
class RunningService:
    """A started service: its process (the leader of its own process group) and its log."""

    service: Service
    process: Popen[bytes]
    log_path: Path

    @property
    def name(self) -> str:
        return self.service.name


@dataclass
class Supervisor:
    """Runs services in their own process groups and, whatever happens, stops every one."""

    env: dict[str, str]
    cwd: Path
    logs: Path
    grace_seconds: float
    running: list[RunningService] = field(default_factory=list)
    stop_signal: int | None = None
    _stopping: bool = False
    _force: bool = False

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Turn Ctrl-C, SIGTERM and SIGHUP into a stop request while the block runs."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping:
            # A second Ctrl-C while stopping means: do not wait for the grace period.
            self._force = True
        self.stop_signal = signum

    def start(self, service: Service) -> RunningService:
        """Start one service in a new session, its output appended to its log file."""
        with self._log_for(service) as (log_path, log):
            process = Popen(
                service.argv,
                env={**self.env, **service.env},
                cwd=self.cwd,
                stdin=DEVNULL,
                stdout=log,
                stderr=STDOUT,
                start_new_session=True,
            )
        running = RunningService(service, process, log_path)
        self.running.append(running)
        return running

    def run_step(self, step: Service, timeout: float) -> None:
        """Run a one-shot step to completion; raise PlatformError if it fails."""
        # Same process group as `goshen up`: Ctrl-C in the terminal stops the step as well.
        with self._log_for(step) as (log_path, log):
            try:
                result = subprocess.run(
                    step.argv,
                    env={**self.env, **step.env},
                    cwd=self.cwd,
                    stdin=DEVNULL,
                    stdout=log,
                    stderr=STDOUT,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                message = f"{step.name} did not finish in {timeout:.0f} s"
                raise PlatformError(message, [log_path]) from None
        if result.returncode != 0:
            message = f"{step.name} failed ({_describe_exit(result.returncode)})"
            raise PlatformError(message, [log_path])

    @contextmanager
    def _log_for(self, service: Service) -> Iterator[tuple[Path, BinaryIO]]:
        """The service's log file, opened for appending after a marker that starts this run."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{service.name}.log"
        with log_path.open("ab") as log:
            started = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"\n{LOG_MARKER} {service.name} at {started}\n".encode())
            command = shlex.join(service.argv).replace("\n", "\\n")  # one line, always
            log.write(f"$ {command}\n".encode())
            log.flush()
            yield log_path, log

    def check_alive(self) -> None:
        """Raise PlatformError if any service has exited; none of them is meant to."""
        for running in self.running:
            code = running.process.poll()
            if code is not None:
                raise PlatformError(
                    f"{running.name} exited unexpectedly ({_describe_exit(code)})",
                    [running.log_path],
                )

    def wait_while_running(self) -> None:
        """Block until a stop signal arrives; raise PlatformError if a service dies first."""
        while self.stop_signal is None:
            self.check_alive()
            time.sleep(POLL_SECONDS)

    def stop_all(self) -> None:
        """SIGTERM every process group, SIGKILL what outlives the grace period, reap all."""
        self._stopping = True
        remaining = list(self.running)
        for running in remaining:
            _signal_group(running, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        while time.monotonic() < deadline and not self._force:
            remaining = [running for running in remaining if not _group_gone(running)]
            if not remaining:
                break
            time.sleep(0.1)
        # Only groups not yet seen empty: a group id can be reused once its group is gone.
        for running in remaining:
            _signal_group(running, signal.SIGKILL)
        for running in self.running:
            running.process.wait()


def run_platform(settings: Settings, on_ready: Callable[[], None] | None = None) -> int:
    """Run the whole platform until Ctrl-C or SIGTERM; the exit status of `goshen up`.

    `on_ready` runs once every service answers (the demo's walkthrough); if it raises, the
    platform stops and the exit status is 1.
    """
    # Health probes run every half second; httpx would log each one at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        services = platform_services(settings)
        _check_ports_free(settings.host, services)
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
            ready = _wait_until_ready(supervisor, settings)
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


def _check_ports_free(host: str, services: Sequence[Service]) -> None:
    for service in services:
        if service.port is None:
            continue
        setting = service.port_setting or f"{ENV_PREFIX}PORT"
        try:
            _bind_once(host, service.port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PlatformError(
                    f"port {service.port} is already in use ({setting}); "
                    f"set {setting} to a free port"
                ) from None
            if exc.errno == errno.EACCES:
                raise PlatformError(
                    f"port {service.port} needs privileges ({setting}); "
                    f"set {setting} to a free port above 1023"
                ) from None
            raise PlatformError(
                f"cannot listen on {host!r}: {exc.strerror or exc} ({ENV_PREFIX}HOST); "
                f"set {ENV_PREFIX}HOST to an address of this machine"
            ) from None


def _bind_once(host: str, port: int) -> None:
    """Bind and release `host:port` as the services will, so a busy port fails before start."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        # As servers do: a port held only by connections in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)


def _wait_until_ready(supervisor: Supervisor, settings: Settings) -> bool:
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


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines a service wrote since `goshen up` last started it."""
    try:
        with log_path.open("rb") as log:
            log.seek(max(0, log_path.stat().st_size - 64 * 1024))
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    current_run = text.rsplit(LOG_MARKER, 1)[-1]
    # The run's first two lines are the marker's end and the command line.
    return current_run.splitlines()[2:][-lines:]


def _signal_group(running: RunningService, signum: int) -> None:
    # ProcessLookupError: the whole group has already exited.
    with suppress(ProcessLookupError):
        os.killpg(running.process.pid, signum)


def _group_gone(running: RunningService) -> bool:
    """True once no process of the service's group is left (grandchildren included)."""
    running.process.poll()  # reap the leader, or the zombie would keep the group alive
    try:
        os.killpg(running.process.pid, 0)
    except ProcessLookupError:
        return True
    return False


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"
