"""One account's burst against everyone else: does another account's `GET /v1/jobs` and the
process's /healthz keep answering while one account submits 200 jobs a second?

    python bench/tenant_burst.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                 [--rate 200] [--seconds 20] [--caps 8 10000] [--out r.json]
                                 [--api-source DIR]

One API process (`uvicorn serving.app:create_app --factory`) on a fresh PostgreSQL database per
run, and no worker: the jobs stay queued, so the per-account cap on active jobs is raised out of
the way (GOSHEN_MAX_ACTIVE_JOBS_PER_USER), and so is the per-minute generate limit
(GOSHEN_RATE_LIMIT_GENERATE; at 600/minute it would refuse most of the burst by itself): what is
measured is GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT. Open loop, on fixed schedules that never
wait for answers: account A sends `--rate` POST /v1/generate a second for `--seconds`; account B
sends 10 GET /v1/jobs a second; a prober asks /healthz every 100 ms. Each `--caps` value is one
run with its own API process and database (10000, its most: the bound effectively off). The load
generator runs in this process, on the same machine as the API and PostgreSQL. `--api-source`
serves another checkout's API (say, an earlier commit's, from `git archive`) on the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from predict_vs_mlflow import free_port, wait_until
from sqlalchemy.engine import make_url

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
B_RATE = 10.0  # account B's GET /v1/jobs a second
PROBE_SECONDS = 0.1  # /healthz every 100 ms
ANSWER_TIMEOUT = 120.0  # an answer later than this counts as none
UNLIMITED = "100000000/minute"


@dataclass
class Timings:
    """Answers of one kind of request: (sent at, seconds to answer, status or 0 for none)."""

    answers: list[tuple[float, float, int]] = field(default_factory=list)

    def seconds(self) -> list[float]:
        return [took for _, took, _ in self.answers]

    def statuses(self) -> dict[str, int]:
        return {str(code): n for code, n in sorted(Counter(s for *_, s in self.answers).items())}


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"goshen_bench_{secrets.token_hex(4)}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(database_url: str) -> tuple[str, str, str]:
    """Migrate; a diffusion entry with a live version (no registry asked); two accounts' keys."""
    from goshen import accounts, catalog, registry
    from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
    from goshen.db.models import ModelRuntime, ModelStatus, PricingUnit, Role, Visibility

    engine = make_engine(database_url)
    migrate.upgrade(engine)
    with session_scope(make_sessionmaker(engine)) as session:
        session.add(
            catalog.generation_entry(
                "burst-digits",
                ModelRuntime.onnx_diffusion,
                "burst-digits",
                alias=registry.PRODUCTION,
                live_version="1",
                pricing_unit=PricingUnit.image,
                price_micros=1000,
                visibility=Visibility.public,
                status=ModelStatus.ready,
            )
        )
        keys = []
        for name in ("a", "b"):
            user = accounts.create_user(
                session, email=f"{name}@burst.example", role=Role.developer, credits_micros=10**15
            )
            keys.append(accounts.issue_key(session, user, name="bench")[1])
    engine.dispose()
    return "burst-digits", keys[0], keys[1]


@contextmanager
def api_process(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[None]:
    """The API's process, run from `cwd`, for the block; stopped with SIGTERM, then SIGKILL."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)


async def _request(port: int, method: str, path: str, key: str | None, body: bytes) -> int:
    """One HTTP/1.1 request on a connection of its own; the answer's status. A bare client on
    asyncio streams: httpx's pool, on one loop with thousands of requests open, cost more
    than the API's answers and delayed every measurement."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if key is not None:
            head += f"Authorization: Bearer {key}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        status_line = await reader.readline()
        await reader.read()  # the rest, until the server closes
        return int(status_line.split()[1])
    finally:
        writer.close()


async def _timed(timings: Timings, started: float, request: Callable[[], Awaitable[int]]) -> None:
    sent = time.monotonic()
    try:
        status = await asyncio.wait_for(request(), ANSWER_TIMEOUT)
    except (OSError, TimeoutError, IndexError, ValueError):
        status = 0  # no answer, or not HTTP
    timings.answers.append((sent - started, time.monotonic() - sent, status))


async def _schedule(
    rate: float, seconds: float, send: Callable[[], Coroutine[Any, Any, None]]
) -> list[asyncio.Task[None]]:
    """Start `send()` `rate` times a second for `seconds`, on time, whatever the answers."""
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send()))
    return tasks


async def load(
    port: int, model: str, key_a: str, key_b: str, rate: float, seconds: float
) -> dict[str, Any]:
    a, b, health, missing = Timings(), Timings(), Timings(), Timings()
    body = json.dumps({"model": model, "input": {"digit": 3}}).encode()

    def submit() -> Awaitable[int]:
        return _request(port, "POST", "/v1/generate", key_a, body)

    def list_jobs() -> Awaitable[int]:
        return _request(port, "GET", "/v1/jobs", key_b, b"")

    def probe() -> Awaitable[int]:
        return _request(port, "GET", "/healthz", None, b"")

    def no_route() -> Awaitable[int]:
        return _request(port, "GET", "/no-such-route", None, b"")

    for _ in range(3):  # warm up: both keys authenticated and cached, first-use writes done
        await submit()
        await list_jobs()
    started = time.monotonic()
    bursts = await asyncio.gather(
        _schedule(rate, seconds, lambda: _timed(a, started, submit)),
        _schedule(B_RATE, seconds, lambda: _timed(b, started, list_jobs)),
        _schedule(1 / PROBE_SECONDS, seconds, lambda: _timed(health, started, probe)),
        # A route that does not exist touches no pool: it measures the event loop (and this
        # generator) alone.
        _schedule(B_RATE, seconds, lambda: _timed(missing, started, no_route)),
    )
    await asyncio.gather(*(task for tasks in bursts for task in tasks))
    return {"a": a, "b": b, "healthz": health, "missing": missing, "seconds": seconds}


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _longest_unanswered(health: Timings) -> float:
    """The longest time /healthz left a probe unanswered: its slowest answer (probes go every
    100 ms whatever the answers, so a stall shows as one probe's wait)."""
    return max(health.seconds())


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    a, b, health = measured["a"], measured["b"], measured["healthz"]
    ms = 1000
    return {
        "a_statuses": a.statuses(),
        "a_p50_ms": round(statistics.median(a.seconds()) * ms, 1),
        "a_p99_ms": round(_percentile(a.seconds(), 0.99) * ms, 1),
        "a_accepted_per_second": round(
            sum(1 for *_, s in a.answers if s == 201) / measured["seconds"], 1
        ),
        "b_statuses": b.statuses(),
        "b_p50_ms": round(statistics.median(b.seconds()) * ms, 1),
        "b_p99_ms": round(_percentile(b.seconds(), 0.99) * ms, 1),
        "b_max_ms": round(max(b.seconds()) * ms, 1),
        "healthz_statuses": health.statuses(),
        "healthz_p99_ms": round(_percentile(health.seconds(), 0.99) * ms, 1),
        "healthz_longest_unanswered_ms": round(_longest_unanswered(health) * ms, 1),
        "no_route_p99_ms": round(_percentile(measured["missing"].seconds(), 0.99) * ms, 1),
    }


def run(server_url: str, cap: int, rate: float, seconds: float, source: Path) -> dict[str, Any]:
    with fresh_database(server_url) as database_url, tempfile.TemporaryDirectory() as home:
        model, key_a, key_b = seed(database_url)
        port = free_port()
        env = {
            **os.environ,
            "GOSHEN_HOME": home,
            "GOSHEN_DATABASE_URL": database_url,
            "GOSHEN_API_PORT": str(port),
            "GOSHEN_LOG_LEVEL": "WARNING",
            "GOSHEN_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # never asked: a live version
            "GOSHEN_RATE_LIMIT_GENERATE": UNLIMITED,
            "GOSHEN_RATE_LIMIT_DEFAULT": UNLIMITED,
            "GOSHEN_MAX_ACTIVE_JOBS_PER_USER": "100000000",
            "GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT": str(cap),
            "PYTHONPATH": str(source),
        }
        log = Path(home) / "api.log"
        uvicorn = [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory"]
        uvicorn += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        with api_process(uvicorn, env, log, source):
            wait_until(f"http://127.0.0.1:{port}/healthz", log)
            measured = asyncio.run(load(port, model, key_a, key_b, rate, seconds))
        return {"cap": cap, "rate": rate, **summarize(measured)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_SERVER)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--caps", type=int, nargs="+", default=[8, 10_000])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--api-source", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    cpus = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    results = [
        run(args.database_url, cap, args.rate, args.seconds, args.api_source) for cap in args.caps
    ]
    for result in results:
        print(json.dumps(result))
    report = {"cpus": cpus, "load_average": os.getloadavg(), "runs": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
