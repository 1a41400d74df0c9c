"""The admin job list on PostgreSQL with many jobs: GET /v1/admin/jobs through the real app,
unfiltered and with each filter, p50/p95 over repeated requests.

    python bench/admin_jobs.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                               [--jobs 100000] [--requests 50] [--limits 20 100] [--out r.json]

Seeds a fresh database on the server (dropped afterwards) with `--jobs` jobs in bulk: 40 users
(a few busy, most quiet), 12 models, every status (mostly succeeded, a few queued and running),
spread evenly over the last 30 days, succeeded ones with an output image. Then ANALYZE, as
autovacuum would have by then, and times the route in process (FastAPI's TestClient, so the
figures are the app and the database, not a network).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from goshen import accounts
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import Job, JobStatus, Model, ModelKind, ModelRuntime, PricingUnit, Role
from goshen.ids import smallest_id_at
from serving.app import create_app

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
USERS, MODELS, DAYS, BATCH = 40, 12, 30, 10_000
# Share of jobs per status: what a busy platform's history looks like.
STATUSES = {
    JobStatus.succeeded: 0.90,
    JobStatus.failed: 0.05,
    JobStatus.canceled: 0.04,
    JobStatus.queued: 0.007,
    JobStatus.running: 0.003,
}
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


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


def _job_id_at(rng: random.Random, moment: datetime) -> str:
    """An id as goshen.ids.new_id makes it at `moment`: its millisecond, then random."""
    return smallest_id_at("job", moment)[:14] + "".join(rng.choices(CROCKFORD, k=16))


def seed(database_url: str, jobs: int, now: datetime) -> dict[str, Any]:
    """Users, models and `jobs` jobs in bulk; an admin key and what the filters will name."""
    rng = random.Random(7)
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as session:
        admin = accounts.create_user(
            session, email="admin@bench.local", role=Role.admin, credits_micros=0
        )
        _, admin_key = accounts.issue_key(session, admin, name="bench")
        users = [
            accounts.create_user(
                session, email=f"user{n}@bench.local", role=Role.developer, credits_micros=0
            )
            for n in range(USERS)
        ]
        models = [
            Model(
                name=f"bench-model-{n}",
                kind=ModelKind.diffusion,
                runtime=ModelRuntime.onnx_diffusion,
                registered_model=f"bench-model-{n}",
                pinned_version="1",
                pricing_unit=PricingUnit.image,
            )
            for n in range(MODELS)
        ]
        session.add_all(models)
        session.flush()
        user_ids, model_ids = [user.id for user in users], [model.id for model in models]
        model_names = [model.name for model in models]
    # Zipf-like: the first users and models take most of the jobs.
    user_weights = [1 / (n + 1) for n in range(USERS)]
    model_weights = [1 / (n + 1) for n in range(MODELS)]
    statuses, status_weights = list(STATUSES), list(STATUSES.values())
    start = now - timedelta(days=DAYS)
    span = (now - start) / jobs
    rows = []
    with engine.begin() as connection:
        for n in range(jobs):
            created = start + span * n
            status = rng.choices(statuses, status_weights)[0]
            ended = status in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
            rows.append(
                {
                    "id": _job_id_at(rng, created),
                    "user_id": rng.choices(user_ids, user_weights)[0],
                    "model_id": rng.choices(model_ids, model_weights)[0],
                    "model_version": "1",
                    "input": {"digit": n % 10, "num_images": 1, "seed": n},
                    "status": status,
                    "attempt": 0 if status == JobStatus.queued else 1,
                    "run_after": created,
                    "logs": "loaded model\nsampled 1 image\n" if ended else "",
                    "output": _output(n) if status == JobStatus.succeeded else None,
                    "error": "worker lost" if status == JobStatus.failed else None,
                    "created_at": created,
                    "completed_at": created + timedelta(seconds=3) if ended else None,
                    "queue_seconds": 0.4 if status != JobStatus.queued else None,
                    "run_seconds": 2.6 if ended else None,
                    "cost_micros": 1000 if status == JobStatus.succeeded else None,
                }
            )
            if len(rows) == BATCH:
                connection.execute(insert(Job), rows)
                rows = []
        if rows:
            connection.execute(insert(Job), rows)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE"))
    engine.dispose()
    return {
        "admin_key": admin_key,
        "busy_user": user_ids[0],
        "quiet_user": user_ids[-1],
        "busy_model": model_names[0],
        "quiet_model": model_names[-1],
    }


def _output(n: int) -> dict[str, Any]:
    image = {"key": f"outputs/bench/{n}.png", "content_type": "image/png", "width": 8, "height": 8}
    return {"images": [image]}


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def cases(seeded: dict[str, Any], now: datetime) -> dict[str, dict[str, str]]:
    """The filters to time: none, each one alone, and a page deep in the list."""
    day_ago, hour_ago = now - timedelta(days=1), now - timedelta(hours=1)
    mid = smallest_id_at("job", now - timedelta(days=DAYS / 2))
    return {
        "unfiltered": {},
        "status=succeeded (90 %)": {"status": "succeeded"},
        "status=running (0.3 %)": {"status": "running"},
        "model (busiest)": {"model": seeded["busy_model"]},
        "model (quietest)": {"model": seeded["quiet_model"]},
        "user_id (busiest)": {"user_id": seeded["busy_user"]},
        "user_id (quietest)": {"user_id": seeded["quiet_user"]},
        "created_after (last hour)": {"created_after": hour_ago.isoformat()},
        "created in a day, 7 days ago": {
            "created_after": (day_ago - timedelta(days=7)).isoformat(),
            "created_before": (now - timedelta(days=7)).isoformat(),
        },
        "cursor half way back": {"cursor": mid},
        "status=failed + model + user": {
            "status": "failed",
            "model": seeded["busy_model"],
            "user_id": seeded["busy_user"],
        },
    }


# The dashboard's other reads that go over the jobs table, timed beside the list.
OTHER_READS = {
    "GET /v1/admin/stats?window=1h": ("/v1/admin/stats", {"window": "1h"}),
    "GET /v1/admin/stats?window=7d (series over a week of jobs)": (
        "/v1/admin/stats",
        {"window": "7d"},
    ),
    "GET /v1/admin/users": ("/v1/admin/users", {"limit": "100"}),
    "GET /v1/admin/workers": ("/v1/admin/workers", {}),
}


def measure(
    database_url: str, jobs: int, requests: int, limits: Sequence[int], home: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    now = datetime.now(UTC)
    started = time.perf_counter()
    seeded = seed(database_url, jobs, now)
    print(f"seeded {jobs} jobs in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    settings = Settings(
        _env_file=None,
        home=home,
        database_url=database_url,
        secret_key=secrets.token_urlsafe(32),
        rate_limit_default="1000000/minute",
    )
    headers = {"Authorization": f"Bearer {seeded['admin_key']}"}
    rows: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    with TestClient(create_app(settings)) as client:
        for name, params in cases(seeded, now).items():
            row: dict[str, Any] = {"case": name}
            for limit in limits:
                query = {**params, "limit": str(limit)}
                first = client.get("/v1/admin/jobs", params=query, headers=headers)
                assert first.status_code == 200, first.text
                timings = []
                for _ in range(requests):
                    began = time.perf_counter()
                    response = client.get("/v1/admin/jobs", params=query, headers=headers)
                    timings.append((time.perf_counter() - began) * 1000)
                    assert response.status_code == 200, response.text
                row[f"items_{limit}"] = len(first.json()["data"])
                row[f"p50_{limit}"] = statistics.median(timings)
                row[f"p95_{limit}"] = _percentile(timings, 0.95)
            rows.append(row)
        for name, (path, params) in OTHER_READS.items():
            timings = []
            for _ in range(requests + 1):
                began = time.perf_counter()
                response = client.get(path, params=params, headers=headers)
                timings.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, response.text
            other.append(
                {
                    "case": name,
                    "p50": statistics.median(timings[1:]),
                    "p95": _percentile(timings[1:], 0.95),
                }
            )
    return rows, other


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", default=os.environ.get("GOSHEN_TEST_DATABASE_URL", DEFAULT_SERVER)
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50, help="timed requests per case")
    parser.add_argument("--limits", type=int, nargs="+", default=[20, 100], help="page sizes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    url = _create_database(args.database_url)
    try:
        with tempfile.TemporaryDirectory() as home:
            rows, other = measure(url, args.jobs, args.requests, args.limits, Path(home))
    finally:
        _drop_database(args.database_url, url)
    header = " | ".join(f"limit={limit}: p50 / p95 (items)" for limit in args.limits)
    print(f"| filter | {header} |")
    print("|---|" + "---|" * len(args.limits))
    for row in rows:
        cells = " | ".join(
            f"{row[f'p50_{limit}']:.1f} / {row[f'p95_{limit}']:.1f} ms ({row[f'items_{limit}']})"
            for limit in args.limits
        )
        print(f"| {row['case']} | {cells} |")
    print("\n| other admin read | p50 / p95 |\n|---|---|")
    for row in other:
        print(f"| {row['case']} | {row['p50']:.1f} / {row['p95']:.1f} ms |")
    if args.out:
        args.out.write_text(json.dumps({"jobs": args.jobs, "rows": rows, "other": other}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
