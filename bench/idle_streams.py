"""What idle job event streams cost the API on PostgreSQL: CPU and database transactions.

    python bench/idle_streams.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                 [--streams 1000] [--seconds 20] [--poll-seconds 120 1]
                                 [--api-source DIR]

N jobs are queued (no worker runs, so nothing happens to them) and N `/v1/jobs/{id}/events`
streams are opened on a real uvicorn API, one per job, over raw sockets. Once every stream has
sent its first event and things settled, the API process's CPU time (user + system) and the
database's transactions (pg_stat_database: commits + rollbacks) are counted over `--seconds`.
Each `--poll-seconds` value is a run with that idle poll (serving.jobs.watch
POSTGRES_POLL_SECONDS, patched in the API process): 120 is Goshen's, 1 the poll every stream made
before streams waited on notifications. `--api-source` runs the API from another copy of the
code (e.g. `git archive` of an older commit, to measure the old streams themselves). Each run
gets a fresh database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url

from goshen import accounts
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import Job, Model, ModelKind, ModelRuntime, PricingUnit, Role
from goshen.runtimes.inputs import DigitsInput, batch_key
from serving.jobs.transitions import enqueue

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
OPEN_AT_ONCE = 50  # streams opened concurrently while connecting
SETTLE_SECONDS = 5.0
# The API, with the idle poll patched in (argv: poll seconds, port).
SERVE = """
import sys
import uvicorn
import serving.jobs.watch as watch
watch.POSTGRES_POLL_SECONDS = float(sys.argv[1])
uvicorn.run("serving.app:create_app", factory=True, host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")
"""


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _create_database(server_url: str) -> str:
    name = f"goshen_bench_{secrets.token_hex(4)}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(server_url: str, url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _seed(database_url: str, jobs: int) -> tuple[str, list[str]]:
    """A developer's key and `jobs` queued jobs of theirs."""
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    factory = make_sessionmaker(engine)
    with session_scope(factory) as session:
        user = accounts.create_user(
            session,
            email=f"{secrets.token_hex(4)}@bench.local",
            role=Role.developer,
            credits_micros=0,
        )
        _, key = accounts.issue_key(session, user, name="bench")
        model = Model(
            name="idle",
            kind=ModelKind.diffusion,
            runtime=ModelRuntime.onnx_diffusion,
            registered_model="idle",
            pinned_version="1",
            pricing_unit=PricingUnit.request,
        )
        session.add(model)
        session.flush()
        model_input = DigitsInput(digit=1, seed=0)
        ids = [
            enqueue(
                session,
                Job(
                    user_id=user.id,
                    model_id=model.id,
                    model_version="1",
                    input=model_input.model_dump(mode="json"),
                    batch_key=batch_key(model_input),
                ),
            ).id
            for _ in range(jobs)
        ]
    engine.dispose()
    return key, ids


def _transactions(database_url: str) -> int:
    name = make_url(database_url).database
    with psycopg.connect(_libpq(database_url), autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        row = connection.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _open_stream(port: int, key: str, job_id: str) -> asyncio.StreamWriter:
    """A stream that has sent its first event; the caller holds it open without reading."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"a stream did not open: {head[:200]!r}")
    await reader.readuntil(b"\n\n")  # its first event (the job's `queued`)
    return writer


async def _open_streams(port: int, key: str, ids: Sequence[str]) -> list[asyncio.StreamWriter]:
    gate = asyncio.Semaphore(OPEN_AT_ONCE)

    async def opened(job_id: str) -> asyncio.StreamWriter:
        async with gate:
            return await _open_stream(port, key, job_id)

    return list(await asyncio.gather(*(opened(job_id) for job_id in ids)))


def measure(
    server_url: str, streams: int, seconds: float, poll: float, source: Path
) -> dict[str, float]:
    database_url = _create_database(server_url)
    try:
        key, ids = _seed(database_url, streams)
        with tempfile.TemporaryDirectory() as home:
            return _measure_api(database_url, Path(home), key, ids, seconds, poll, source)
    finally:
        _drop_database(server_url, database_url)


def _measure_api(
    database_url: str,
    home: Path,
    key: str,
    ids: Sequence[str],
    seconds: float,
    poll: float,
    source: Path,
) -> dict[str, float]:
    port = _free_port()
    environment = os.environ | {
        "GOSHEN_HOME": str(home),
        "GOSHEN_DATABASE_URL": database_url,
        "GOSHEN_SECRET_KEY": secrets.token_urlsafe(32),
        "GOSHEN_RATE_LIMITS_ENABLED": "false",
        "GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT": str(OPEN_AT_ONCE * 4),
    }
    api = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(poll), str(port)], env=environment, cwd=source
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", api)
        result: dict[str, float] = {}

        async def run() -> None:
            opening = time.monotonic()
            writers = await _open_streams(port, key, ids)
            result["open_seconds"] = time.monotonic() - opening
            await asyncio.sleep(SETTLE_SECONDS)  # every stream open and settled: now count
            cpu, xacts, started = _cpu(api.pid), _transactions(database_url), time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - started
            result["core_share"] = (_cpu(api.pid) - cpu) / elapsed
            result["transactions_per_second"] = (_transactions(database_url) - xacts) / elapsed
            for writer in writers:
                writer.close()

        asyncio.run(run())
        return {"streams": len(ids), "poll_seconds": poll, **result}
    finally:
        api.terminate()
        api.wait(timeout=30)


def _cpu(pid: int) -> float:
    """The process's CPU seconds so far, user and system (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for(url: str, api: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError(f"the API exited with {api.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--database-url", default=os.environ.get("GOSHEN_TEST_DATABASE_URL", DEFAULT_SERVER)
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="idle time measured")
    parser.add_argument("--poll-seconds", type=float, nargs="+", default=[120.0, 1.0])
    parser.add_argument(
        "--api-source", type=Path, default=Path.cwd(), help="where the API's code is imported from"
    )
    args = parser.parse_args(argv)
    # Each stream is a socket here and one in the API (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * args.streams + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    rows = [
        measure(args.database_url, args.streams, args.seconds, poll, args.api_source)
        for poll in args.poll_seconds
    ]
    print("| idle poll | streams | API CPU (share of a core) | PostgreSQL transactions/s |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['poll_seconds']:g} s | {row['streams']:.0f} | "
            f"{100 * row['core_share']:.1f} % | {row['transactions_per_second']:.0f} |"
        )
    if len(rows) == 2 and rows[0]["core_share"] > 0:
        ratio = rows[1]["core_share"] / rows[0]["core_share"]
        print(f"\nCPU: the {rows[1]['poll_seconds']:g} s poll costs {ratio:.1f}x the first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
