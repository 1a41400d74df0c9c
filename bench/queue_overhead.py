"""Queue overhead on PostgreSQL: what Goshen's queue and workers add to a job, for a model that
does nothing.

    python bench/queue_overhead.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                   [--jobs 300] [--burst 6000] [--workers 1 2 4] [--out r.json]

Latency: jobs submitted one at a time to idle workers, the same way POST /v1/generate queues them
(a committed row, a NOTIFY); a job's overhead is completed_at - created_at minus the model's own
time (measured inside the worker around generate(), zero here). Throughput: a burst of jobs queued
in one transaction, finished jobs per second with 1, 2 and 4 worker processes. Each run gets a
fresh database on the server, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import (
    Job,
    JobStatus,
    Model,
    ModelKind,
    ModelRuntime,
    PricingUnit,
    Role,
    User,
    utcnow,
)
from goshen.db.notifications import JOB_EVENTS_CHANNEL, Listener
from goshen.runtimes.base import StepReport
from goshen.runtimes.devices import cpu_device
from goshen.runtimes.inputs import DigitsInput, GenerationInput, batch_key
from serving.jobs.transitions import enqueue

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


class NoopGenerator:
    """A model that does nothing: no images, no time."""

    device = cpu_device()

    def generate(
        self, inputs: Sequence[GenerationInput], on_step: StepReport
    ) -> list[list[Image.Image] | None]:
        return [[] for _ in inputs]

    def close(self) -> None:
        pass


class NoopSource:
    def resolve(self, model: Model) -> str:
        return "1"

    def load(self, model: Model, version: str) -> NoopGenerator:
        return NoopGenerator()


def run_noop_worker(settings_json: str, stop_file: str) -> None:
    """A `goshen worker` whose models do nothing; stops when `stop_file` appears."""
    from serving.worker.loop import run_worker

    settings = Settings.model_validate_json(settings_json)
    stop = threading.Event()

    def watch() -> None:
        while not os.path.exists(stop_file):
            time.sleep(0.1)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    run_worker(settings, stop, NoopSource())


def _create_database(server_url: str) -> str:
    name = f"goshen_bench_{secrets.token_hex(4)}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(server_url: str, url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _seed(factory: sessionmaker[Session]) -> tuple[str, str]:
    with session_scope(factory) as session:
        user = User(email=f"{secrets.token_hex(4)}@bench.local", role=Role.developer)
        model = Model(
            name="noop",
            kind=ModelKind.diffusion,
            runtime=ModelRuntime.onnx_diffusion,
            registered_model="noop",
            pinned_version="1",
            pricing_unit=PricingUnit.request,
        )
        session.add_all([user, model])
        session.flush()
        return user.id, model.id


def _job(user_id: str, model_id: str) -> Job:
    model_input = DigitsInput(digit=1, seed=0)
    return Job(
        user_id=user_id,
        model_id=model_id,
        model_version="1",
        input=model_input.model_dump(mode="json"),
        batch_key=batch_key(model_input),
    )


def _wait_done(
    factory: sessionmaker[Session], listener: Listener, count: int, timeout: float = 600
) -> None:
    """Until `count` jobs succeeded; woken by job-event notifications, so it barely polls."""
    deadline = time.monotonic() + timeout
    while True:
        with factory() as session:
            done = session.scalar(
                select(func.count()).select_from(Job).where(Job.status == JobStatus.succeeded)
            )
        if done >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {count} jobs finished")
        listener.wait(0.5)


def _overheads(factory: sessionmaker[Session], ids: Sequence[str]) -> list[float]:
    with factory() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
    return [(job.completed_at - job.created_at).total_seconds() for job in jobs]


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Workers:
    """N worker processes on the benchmark database, started and stopped together."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.stop_file = Path(tempfile.mkdtemp()) / "stop"
        spawn = multiprocessing.get_context("spawn")
        self.processes = [
            spawn.Process(
                target=run_noop_worker, args=(settings.model_dump_json(), str(self.stop_file))
            )
            for _ in range(count)
        ]

    def __enter__(self) -> Workers:
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_file.touch()
        for process in self.processes:
            process.join(timeout=30)


def measure(database_url: str, workers: int, jobs: int, burst: int, home: Path) -> dict:
    """Latency (sequential submissions) and burst throughput with `workers` processes."""
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    factory = make_sessionmaker(engine)
    user_id, model_id = _seed(factory)
    settings = Settings(
        _env_file=None,
        home=home,
        database_url=database_url,
        secret_key=secrets.token_urlsafe(32),
        worker_heartbeat_seconds=1,
    )
    result: dict = {"workers": workers}
    listener = Listener(database_url, (JOB_EVENTS_CHANNEL,))
    with Workers(settings, workers):
        time.sleep(8)  # let every worker import, migrate and register
        ids = []
        for number in range(jobs):
            with session_scope(factory) as session:
                ids.append(enqueue(session, _job(user_id, model_id)).id)
            _wait_done(factory, listener, number + 1)
        overheads = _overheads(factory, ids[10:])  # the first jobs warm the workers' caches
        result.update(
            latency_jobs=len(overheads),
            p50_ms=1000 * statistics.median(overheads),
            p99_ms=1000 * _percentile(overheads, 0.99),
        )
        with session_scope(factory) as session:
            for _ in range(burst):
                enqueue(session, _job(user_id, model_id))
        started = time.monotonic()
        _wait_done(factory, listener, jobs + burst)
        result.update(burst_jobs=burst, jobs_per_second=burst / (time.monotonic() - started))
    listener.close()
    engine.dispose()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", default=os.environ.get("GOSHEN_TEST_DATABASE_URL", DEFAULT_SERVER)
    )
    parser.add_argument("--jobs", type=int, default=300, help="sequential jobs for latency")
    # At over 2,000 jobs/s a burst of 2,000 is over in a second, and the workers' start on it
    # (the first claims, before any prefetch) weighs on the figure; 6,000 measures the rate.
    parser.add_argument("--burst", type=int, default=6000, help="jobs queued at once")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for count in args.workers:
        url = _create_database(args.database_url)
        try:
            with tempfile.TemporaryDirectory() as home:
                rows.append(measure(url, count, args.jobs, args.burst, Path(home)))
        finally:
            _drop_database(args.database_url, url)
        print(f"{count} workers: {rows[-1]}", file=sys.stderr)
    print("| workers | p50 overhead | p99 overhead | finished jobs/s (burst) |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['workers']} | {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | "
            f"{row['jobs_per_second']:.0f} ({row['burst_jobs']} jobs) |"
        )
    if args.out:
        args.out.write_text(json.dumps({"measured_at": utcnow().isoformat(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
