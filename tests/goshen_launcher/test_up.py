"""`goshen up` end to end: every service answers, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import mlflow
import mlflow.onnx
import numpy as np
import pytest
from PIL import Image

from goshen_launcher.services import dagster_code_locations
from goshen_pipelines.lib.digits import classifier_features

UP = [sys.executable, "-m", "goshen_launcher.cli", "up"]
DEMO = [sys.executable, "-m", "goshen_launcher.cli", "demo"]
TRAINING_SECONDS = 1200
PORT_SETTINGS = ("API", "MLFLOW", "DAGSTER", "DASHBOARD")
STARTUP_SECONDS = 240


@dataclass
class Platform:
    """A running `goshen up` and what the test learned about its processes."""

    process: subprocess.Popen[bytes]
    output: Path
    ports: dict[str, int]
    sessions: set[int] = field(default_factory=set)

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def text(self) -> str:
        return self.output.read_text(errors="replace")


# How long goshen up takes at most to refuse a port that is taken (it checks them first).
PORT_CHECK_SECONDS = 15


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _environment(home: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {**os.environ, "GOSHEN_HOME": str(home), "GOSHEN_LOG_LEVEL": "WARNING"}
    env.update({f"GOSHEN_{name}_PORT": str(port) for name, port in ports.items()})
    return env


def _processes() -> dict[int, tuple[int, int]]:
    """Every process on the machine: pid -> (parent pid, session id)."""
    listing = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,sid="], capture_output=True, text=True, check=True
    ).stdout
    rows = (line.split() for line in listing.splitlines() if line.strip())
    return {int(pid): (int(ppid), int(sid)) for pid, ppid, sid in rows}


def _descendants(root: int, table: dict[int, tuple[int, int]]) -> set[int]:
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _leftovers(platform: Platform) -> list[int]:
    """Processes still alive in a session that `goshen up` or one of its services started."""
    return sorted(pid for pid, (_, sid) in _processes().items() if sid in platform.sessions)


def _wait_for(
    condition: Callable[[], bool], platform: Platform, what: str, seconds: float = STARTUP_SECONDS
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if platform.process.poll() is not None:
            pytest.fail(f"goshen up exited with {platform.process.returncode}:\n{platform.text()}")
        with suppress(httpx.HTTPError):
            if condition():
                return
        time.sleep(1)
    pytest.fail(f"{what} not within {seconds} s:\n{platform.text()}")


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


def _stop(platform: Platform) -> None:
    """Whatever happened, end `goshen up` and every process it started."""
    if platform.process.poll() is None:
        platform.process.kill()
        platform.process.wait()
    for session in platform.sessions:
        with suppress(ProcessLookupError):
            os.killpg(session, signal.SIGKILL)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    yield from _run(UP, tmp_path)


@pytest.fixture
def demo_platform(tmp_path: Path) -> Iterator[Platform]:
    yield from _run(DEMO, tmp_path)


def _run(command: list[str], tmp_path: Path) -> Iterator[Platform]:
    platform = _start(command, tmp_path)
    try:
        yield platform
    finally:
        _stop(platform)


def _start(command: list[str], tmp_path: Path, tries: int = 3) -> Platform:
    """Start `command` on free ports. A port found free can be taken before goshen up checks
    it (another test binding port 0 gets it too): goshen up then refuses to start, and it is
    started again on other ports."""
    for attempt in range(1, tries + 1):
        ports = dict(zip(PORT_SETTINGS, _free_ports(len(PORT_SETTINGS)), strict=True))
        output = tmp_path / f"goshen-up-{attempt}.out"
        with output.open("wb") as sink:
            process = subprocess.Popen(
                command,
                env=_environment(tmp_path / "home", ports),
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # start_new_session: goshen up leads its own session, so it and its steps can be found.
        platform = Platform(process, output, ports, sessions={process.pid})
        try:
            # Its ports are checked before anything starts: a refusal comes within seconds.
            process.wait(timeout=PORT_CHECK_SECONDS)
        except subprocess.TimeoutExpired:
            return platform
        if attempt == tries or "is already in use" not in platform.text():
            return platform  # a failure for the test to report
    raise AssertionError("unreachable")


@pytest.mark.slow
def test_up_serves_every_service_and_ctrl_c_leaves_nothing_behind(platform: Platform) -> None:
    _wait_for(lambda: "Press Ctrl-C to stop." in platform.text(), platform, "the banner")
    _wait_for(lambda: _answers(platform.url("API", "/healthz")), platform, "API /healthz")
    _wait_for(lambda: _answers(platform.url("MLFLOW", "/health")), platform, "MLflow /health")
    _wait_for(lambda: _answers(platform.url("DASHBOARD", "/")), platform, "Streamlit /")
    locations = dagster_code_locations(platform.url("DAGSTER"))
    assert {name: location.load_status for name, location in locations.items()} == {
        "goshen": "LOADED"
    }
    assert locations["goshen"].error is None
    for service in ("API", "DAGSTER", "MLFLOW", "DASHBOARD"):
        assert platform.url(service) in platform.text()

    table = _processes()
    descendants = _descendants(platform.process.pid, table)
    children = {pid for pid in descendants if table[pid][0] == platform.process.pid}
    platform.sessions |= {table[pid][1] for pid in descendants}
    # api, worker, webhooks, mlflow, dagster webserver and daemon, dashboard
    assert len(children) == 7, platform.text()

    platform.process.send_signal(signal.SIGINT)
    assert platform.process.wait(timeout=60) == 0, platform.text()
    assert _leftovers(platform) == []


def test_a_port_in_use_names_the_setting_to_change(tmp_path: Path) -> None:
    ports = dict(zip(PORT_SETTINGS, _free_ports(len(PORT_SETTINGS)), strict=True))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["API"]))
        taken.listen()
        result = subprocess.run(
            UP,
            env=_environment(tmp_path / "home", ports),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert result.returncode == 2
    assert (result.stdout + result.stderr).splitlines() == [
        f"goshen: port {ports['API']} is already in use (GOSHEN_API_PORT); "
        "set GOSHEN_API_PORT to a free port"
    ]
    assert not (tmp_path / "home" / "logs").exists()


@pytest.mark.slow
def test_demo_trains_the_digits_models_and_saves_a_grid_of_recognizable_digits(
    demo_platform: Platform,
) -> None:
    """`make demo` on a fresh home: train in Dagster, generate through the API, save a grid."""
    saved = re.compile(r"generated digits, one per column: (\S+\.png)")
    _wait_for(
        lambda: saved.search(demo_platform.text()) is not None,
        demo_platform,
        "the digits grid",
        TRAINING_SECONDS,
    )
    text = demo_platform.text()
    assert "training the digits models in Dagster" in text and "/runs/" in text
    _wait_for(lambda: "Press Ctrl-C to stop." in demo_platform.text(), demo_platform, "the banner")
    grid = np.asarray(Image.open(saved.search(text).group(1)).convert("L"))
    # The saved grid: digits 0-9 across, samples down, each 8x8 image enlarged 4 times.
    cells = grid[::4, ::4].reshape(-1, 8, 10, 8).transpose(0, 2, 1, 3)
    asked = np.tile(np.arange(10), cells.shape[0])
    images = cells.reshape(-1, 8, 8).astype(np.float32) / 255
    session = _live_classifier(demo_platform.url("MLFLOW"))
    probabilities = session.run(None, {"features": classifier_features(images)})[0]
    read = probabilities.argmax(axis=1)
    # The digits classifier, the platform's own judge of generated digits, reads them as asked.
    assert (read == asked).mean() >= 0.9, (read.reshape(-1, 10), text[-3000:])
    # So does the walkthrough, through the API: one /predict call on the live classifier.
    served = re.search(
        r"digits-classifier read (\d+) of (\d+) generated digits", demo_platform.text()
    )
    assert served is not None, demo_platform.text()[-3000:]
    assert int(served.group(1)) >= 0.9 * int(served.group(2)), served.group(0)
    # The developer's spending, and today's usage rollup in the Dagster UI.
    assert "credits spent)" in demo_platform.text(), demo_platform.text()[-3000:]
    _wait_for(lambda: "usage_daily for " in demo_platform.text(), demo_platform, "the usage rollup")
    demo_platform.process.send_signal(signal.SIGINT)
    assert demo_platform.process.wait(timeout=60) == 0, demo_platform.text()


def _live_classifier(tracking_uri: str):  # type: ignore[no-untyped-def]
    """digits-classifier@production from the demo's own MLflow, in ONNX Runtime."""
    import onnxruntime as ort

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        model = mlflow.onnx.load_model("models:/digits-classifier@production")
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
