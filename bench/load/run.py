"""The load test: Goshen's API under locust at fixed rates, on PostgreSQL, with a real worker.

    python bench/load/run.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                             [--rates 2 5 10] [--predict-per-job 10] [--duration 30]
                             [--accounts 50] [--tracking-uri URI] [--out load.json]

Set up in a temporary folder, on loopback: an MLflow tracking server (or --tracking-uri's) with
two tiny random-weight models registered (bench/load/load_models.py: a digits generator, the digits
UNet at 8x8 with 4 DDPM steps, and a digits-shaped classifier); a fresh PostgreSQL database,
dropped afterwards, with an admin and `--accounts` developer accounts, each with a key and
credit enough for the run; `goshen api` and `goshen worker` as processes of their own, as
production runs them, billing and rate limits on at their defaults; both models in the catalog
through the admin API, public, and deployed. Then, for each rate R, locust runs headless for
`--duration` seconds (bench/load/locustfile.py): R jobs a second submitted to POST /v1/generate
(half followed by polling GET /v1/jobs/{id}, half by the event stream) and R x
`--predict-per-job` requests a second to POST /v1/models/{name}/predict. It prints a table:
route, the rate asked and the rate served, requests, p50, p99, error %, 5xx %.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the other benches' helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_models import register_tiny_classifier, register_tiny_generator  # noqa: E402
from predict_vs_mlflow import DEFAULT_SERVER, free_port, process, wait_until  # noqa: E402
from tenant_burst import fresh_database  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
CREDIT_MICROS = 10**12  # per account: no run ends in 402s
STOP_TIMEOUT_SECONDS = 20
LOCUST_GRACE_SECONDS = 60 + STOP_TIMEOUT_SECONDS  # beyond --duration, to start and stop


@contextmanager
def platform(
    database_url: str, tracking_uri: str, root: Path, accounts: int
) -> Iterator[dict[str, Any]]:
    """`goshen api` and `goshen worker` on a seeded database, both models deployed: the API's
    URL, the models' names and the developers' keys."""
    generator = register_tiny_generator(tracking_uri, f"load-digits-{secrets.token_hex(3)}")
    classifier = register_tiny_classifier(tracking_uri, f"load-classifier-{secrets.token_hex(3)}")
    admin, keys = seed(database_url, accounts)
    port = free_port()
    env = {
        **os.environ,
        "GOSHEN_DATABASE_URL": database_url,
        "GOSHEN_HOME": str(root / "goshen"),
        "GOSHEN_API_PORT": str(port),
        "GOSHEN_MLFLOW_TRACKING_URI": tracking_uri,
        "GOSHEN_LOG_LEVEL": "WARNING",
    }
    api = f"http://127.0.0.1:{port}"
    goshen = [sys.executable, "-m", "goshen_launcher.cli"]
    with ExitStack() as stack:
        stack.enter_context(process([*goshen, "api"], env, root / "api.log"))
        wait_until(f"{api}/healthz", root / "api.log")
        stack.enter_context(process([*goshen, "worker"], env, root / "worker.log"))
        headers = {"Authorization": f"Bearer {admin}"}
        for name, price in ((generator, "image"), (classifier, "request")):
            deploy(api, headers, name, price)
        yield {"api": api, "generator": generator, "classifier": classifier, "keys": keys}


def seed(database_url: str, accounts: int) -> tuple[str, list[str]]:
    """Migrate; an admin's key and `accounts` developers' keys, each account with credit."""
    from goshen import accounts as users
    from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
    from goshen.db.models import Role

    engine = make_engine(database_url)
    migrate.upgrade(engine)
    keys = []
    with session_scope(make_sessionmaker(engine)) as session:
        for number in range(accounts + 1):
            user = users.create_user(
                session,
                email=f"load-{number}@bench.example",
                role=Role.admin if number == 0 else Role.developer,
                credits_micros=CREDIT_MICROS,
            )
            keys.append(users.issue_key(session, user, name="load")[1])
    engine.dispose()
    return keys[0], keys[1:]


def deploy(api: str, headers: dict[str, str], name: str, unit: str) -> None:
    """A public catalog entry for the registered model `name`, deployed."""
    body = {
        "name": name,
        "registered_model": name,
        "alias": "production",
        "pricing": {"unit": unit, "price_micros": 100},
        "visibility": "public",
    }
    created = httpx.post(f"{api}/v1/admin/models", json=body, headers=headers, timeout=120)
    assert created.status_code == 201, created.text
    deployed = httpx.post(f"{api}/v1/admin/models/{name}/deploy", headers=headers, timeout=120)
    assert deployed.json()["status"] == "ready", deployed.text


def run_locust(
    setup: dict[str, Any], root: Path, generate_rate: float, predict_rate: float, seconds: int
) -> dict[str, dict[str, Any]]:
    """One headless locust run at these rates; locustfile.summary()'s figures per route."""
    keys, results = root / "keys.txt", root / f"results-{generate_rate:g}.json"
    keys.write_text("\n".join(setup["keys"]) + "\n")
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    command += ["--host", setup["api"], "--run-time", f"{seconds}s", "--only-summary"]
    # At the end users finish the task in hand (a job's polling or its event stream) rather
    # than being cut off mid-request, which would count as errors.
    command += ["--stop-timeout", str(STOP_TIMEOUT_SECONDS)]
    command += ["--loglevel", "WARNING", "--keys-file", str(keys), "--results", str(results)]
    command += ["--predict-model", setup["classifier"], "--generate-model", setup["generator"]]
    command += ["--predict-rate", f"{predict_rate:g}", "--generate-rate", f"{generate_rate:g}"]
    log = root / f"locust-{generate_rate:g}.log"
    with log.open("wb") as out:
        # Exit status 1 means some request failed: the figures say which.
        subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=seconds + LOCUST_GRACE_SECONDS,
            check=False,
        )
    if not results.exists():
        raise RuntimeError(f"locust wrote no results; {log}:\n{log.read_text()[-3000:]}")
    figures: dict[str, dict[str, Any]] = json.loads(results.read_text())
    return figures


def targets(generate_rate: float, predict_rate: float) -> dict[str, str]:
    """The rate asked of each route, where the load fixes one."""
    from_jobs = f"{generate_rate:g}/s"
    return {
        "POST /v1/models/{name}/predict": f"{predict_rate:g}/s",
        "POST /v1/generate": from_jobs,
        "GET /v1/jobs/{id}/events": f"{generate_rate / 2:g}/s",
        "GET /v1/jobs/{id}": f"every {0.5:g} s per polled job",
    }


def table(runs: list[dict[str, Any]]) -> str:
    rows = [
        "| jobs/s | route | rate asked | rate served | requests | p50 | p99 | error % | 5xx % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        asked = targets(run["generate_rate"], run["predict_rate"])
        for route, figures in run["routes"].items():
            requests = figures["requests"]
            rows.append(
                f"| {run['generate_rate']:g} | {route} | {asked.get(route, '-')} | "
                f"{figures['per_second']:.1f}/s | {requests} | {figures['p50_ms']:.1f} ms | "
                f"{figures['p99_ms']:.1f} ms | {100 * figures['errors'] / requests:.2f} | "
                f"{100 * figures['server_errors'] / requests:.2f} |"
            )
    return "\n".join(rows)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from goshen.config import Settings
    from goshen.tracking import running_tracking_server

    with tempfile.TemporaryDirectory(prefix="goshen-load-") as folder, ExitStack() as stack:
        root = Path(folder)
        tracking_uri = args.tracking_uri
        if tracking_uri is None:
            mlflow = Settings(_env_file=None, home=root / "mlflow", mlflow_port=free_port())
            tracking_uri = stack.enter_context(running_tracking_server(mlflow))
        database_url = stack.enter_context(fresh_database(args.database_url))
        setup = stack.enter_context(platform(database_url, tracking_uri, root, args.accounts))
        runs = []
        for rate in args.rates:
            predict_rate = rate * args.predict_per_job
            routes = run_locust(setup, root, rate, predict_rate, args.duration)
            runs.append({"generate_rate": rate, "predict_rate": predict_rate, "routes": routes})
            print(table(runs[-1:]), file=sys.stderr)
        return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_SERVER, help="a PostgreSQL server")
    parser.add_argument("--rates", type=float, nargs="+", default=[2, 5, 10], help="jobs/s")
    parser.add_argument("--predict-per-job", type=float, default=10)
    parser.add_argument("--duration", type=int, default=30, help="seconds per rate")
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--tracking-uri", help="an MLflow server to use instead of starting one")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    runs = measure(args)
    print(table(runs))
    if args.out:
        args.out.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    # A SIGTERM unwinds like Ctrl-C, so the processes this started are stopped (set here, not
    # in main(): a test calls main() in its own process).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
