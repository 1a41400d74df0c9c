"""The process supervisor of `goshen up`: services in their own process groups, stopped together."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from types import FrameType
from typing import BinaryIO

from goshen_launcher.services import Service

__all__ = ["PlatformError", "RunningService", "Service", "Supervisor", "log_tail"]

POLL_SECONDS = 0.5
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
