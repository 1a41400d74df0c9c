"""The process supervisor behind `goshen up`, on small stand-in services."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from goshen_launcher.supervisor import PlatformError, Service, Supervisor, log_tail

# Starts a grandchild in the same process group, prints its pid, then waits.
WITH_GRANDCHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)
IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _python(name: str, code: str) -> Service:
    return Service(name=name, argv=(sys.executable, "-c", code))


def _supervisor(tmp_path: Path, grace_seconds: float = 10) -> Supervisor:
    return Supervisor(
        env=dict(os.environ), cwd=tmp_path, logs=tmp_path / "logs", grace_seconds=grace_seconds
    )


def _wait_for_output(log: Path, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while not log_tail(log) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log_tail(log)


def _alive(pid: int) -> bool:
    """Running (a zombie has ended: it only waits for its new parent, init, to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel, zombies included
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _ends_within(pid: int, seconds: float) -> bool:
    """The process ends within `seconds`: on a loaded machine a signal can take a moment."""
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stop_all_ends_grandchildren_too(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path)
    running = supervisor.start(_python("parent", WITH_GRANDCHILD))
    grandchild = int(_wait_for_output(running.log_path)[0])

    supervisor.stop_all()

    assert running.process.returncode is not None
    assert _ends_within(grandchild, 5)


def test_a_service_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, grace_seconds=0.5)
    running = supervisor.start(_python("stubborn", IGNORES_SIGTERM))
    _wait_for_output(running.log_path)

    started = time.monotonic()
    supervisor.stop_all()

    assert running.process.returncode == -9
    assert time.monotonic() - started < 5


def test_a_dead_service_is_reported_with_its_exit_code_and_last_lines(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path)
    lines = "".join(f"print('line {n}');" for n in range(30))
    running = supervisor.start(_python("crashy", f"{lines} raise SystemExit(3)"))
    running.process.wait()

    with pytest.raises(PlatformError, match=r"crashy exited unexpectedly \(exit code 3\)") as info:
        supervisor.check_alive()

    assert info.value.logs == [running.log_path]
    assert log_tail(running.log_path) == [f"line {n}" for n in range(10, 30)]
    supervisor.stop_all()


def test_log_tail_shows_only_the_latest_run(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path)
    for word in ("first", "second"):
        supervisor.start(_python("echo", f"print({word!r})")).process.wait()

    assert log_tail(tmp_path / "logs" / "echo.log") == ["second"]


def test_a_failing_step_stops_startup_with_its_log(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path)

    with pytest.raises(PlatformError, match=r"migrate failed \(exit code 1\)") as info:
        supervisor.run_step(_python("migrate", "import sys; sys.exit('schema is broken')"), 30)

    assert log_tail(info.value.logs[0]) == ["schema is broken"]
