"""The chaos run: two `goshen api`, three `goshen worker` and one `goshen webhooks` process on a
PostgreSQL cluster of the test's own; accounts with limited credit submit jobs with webhooks to a
loopback receiver that fails 30 % of deliveries; meanwhile workers are killed with SIGKILL (each
replaced), one is frozen with SIGSTOP until others have taken its jobs over by lease expiry and
then woken, and PostgreSQL restarts. Then tests/chaos/invariants.py checks the ledger, the jobs
and the webhooks (RELIABILITY.md: "a randomized run with worker kills and database restarts").

Every process is the installed CLI's, and the model is a real one: the tiny random digits model
from the test MLflow registry (tests/fixtures/models.py), run by ONNX Runtime.

Two sizes, one scenario: `short` (the default, in `make test`: fewer jobs and accounts, one
kill) and `full` (`make chaos`: 1,000 jobs, ten accounts, three kills), chosen by
GOSHEN_TEST_CHAOS. GOSHEN_TEST_CHAOS_REPORT names a file for the run's figures (JSON).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import (
    DeliveryStatus,
    Job,
    JobStatus,
    ModelRuntime,
    ModelStatus,
    PricingUnit,
    Visibility,
    WebhookDelivery,
)
from tests.chaos.events import TERMINAL, unleash
from tests.chaos.invariants import check
from tests.chaos.processes import running_platform
from tests.chaos.receiver import flaky_receiver
from tests.chaos.traffic import Submission, submit_all
from tests.fixtures.accounts import Account, create_account
from tests.fixtures.models import RegisteredModel
from tests.fixtures.private_postgres import PrivateCluster, free_port

# The suites that start a platform of processes run one after another (make test: --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("platform-processes")]

PRICE_MICROS = 1000  # per image; every job asks for one
FAILURE_RATE = 0.3


@dataclass(frozen=True)
class Scale:
    jobs: int
    accounts: int
    affordable: int  # jobs each account's credit pays for; it submits jobs / accounts
    plan: tuple[str, ...]
    pause: float  # seconds between faults
    steps: int  # denoising steps per job: how long a job runs
    clients: int
    timeout: float  # for the jobs to end and their webhooks to arrive, after the faults


SCALES = {
    # The restart first: a webhook attempt it cuts off is retried once its claim lapses (35 s),
    # which then overlaps the rest of the run.
    "short": Scale(
        jobs=100,
        accounts=3,
        affordable=27,
        plan=("restart", "kill", "freeze"),
        pause=0.5,
        steps=40,
        clients=4,
        timeout=240,
    ),
    "full": Scale(
        jobs=1000,
        accounts=10,
        affordable=80,
        plan=("kill", "freeze", "kill", "restart", "kill"),
        pause=5.0,
        steps=40,
        clients=8,
        timeout=900,
    ),
}


def chosen_scale() -> tuple[str, Scale]:
    name = os.environ.get("GOSHEN_TEST_CHAOS", "short")
    if name not in SCALES:
        raise pytest.UsageError(f"GOSHEN_TEST_CHAOS={name!r}: expected one of {sorted(SCALES)}")
    return name, SCALES[name]


def platform_env(url: str, home: Path, mlflow_uri: str) -> dict[str, str]:
    """The settings every process shares: short leases, quick retries, no rate limits."""
    keep = {name: value for name, value in os.environ.items() if not name.startswith("GOSHEN_")}
    return {
        **keep,
        "GOSHEN_HOME": str(home),
        "GOSHEN_DATABASE_URL": url,
        "GOSHEN_SECRET_KEY": secrets.token_urlsafe(32),
        "GOSHEN_MLFLOW_TRACKING_URI": mlflow_uri,
        "GOSHEN_WEBHOOK_ALLOW_LOOPBACK": "true",
        "GOSHEN_RATE_LIMITS_ENABLED": "false",
        "GOSHEN_MAX_ACTIVE_JOBS_PER_USER": "100000",
        "GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT": "10000",
        "GOSHEN_JOB_LEASE_SECONDS": "3",
        "GOSHEN_QUEUE_RECOVERY_SECONDS": "0.5",
        "GOSHEN_QUEUE_POLL_SECONDS": "0.2",
        "GOSHEN_JOB_RETRY_BASE_SECONDS": "0.1",
        "GOSHEN_JOB_MAX_ATTEMPTS": "5",
        "GOSHEN_WORKER_HEARTBEAT_SECONDS": "0.5",
        "GOSHEN_WORKER_DRAIN_SECONDS": "2",
        "GOSHEN_DEPENDENCY_TIMEOUT_SECONDS": "5",
        "GOSHEN_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "GOSHEN_WEBHOOK_TIMEOUT_SECONDS": "5",
        "GOSHEN_WEBHOOK_CONCURRENCY_PER_RECEIVER": "16",
        "GOSHEN_SHUTDOWN_GRACE_SECONDS": "5",
    }


def _seed(
    sessions: sessionmaker[Session], digits: RegisteredModel, scale: Scale
) -> tuple[str, list[Account]]:
    """The catalog entry (priced per image) and the accounts, each granted what `affordable`
    jobs cost."""
    model = catalog.generation_entry(
        f"chaos-digits-{secrets.token_hex(3)}",
        ModelRuntime.onnx_diffusion,
        digits.name,
        alias=registry.PRODUCTION,
        live_version=digits.version,
        pricing_unit=PricingUnit.image,
        price_micros=PRICE_MICROS,
        visibility=Visibility.public,
        status=ModelStatus.ready,
    )
    with session_scope(sessions) as session:
        session.add(model)
    accounts = [
        create_account(sessions, scale.affordable * PRICE_MICROS) for _ in range(scale.accounts)
    ]
    return model.name, accounts


def _submissions(
    model: str, accounts: list[Account], scale: Scale, webhook: str
) -> list[Submission]:
    return [
        Submission(
            key=f"chaos-{number}",
            account=accounts[number % len(accounts)],
            body={
                "model": model,
                "input": {"digit": number % 10, "seed": number, "num_inference_steps": scale.steps},
                "webhook": webhook,
            },
        )
        for number in range(scale.jobs)
    ]


def _wait_until_settled(sessions: sessionmaker[Session], timeout: float) -> float:
    """Until every job has ended and every webhook delivery is done; seconds it took."""
    started = time.monotonic()
    while True:
        with sessions() as session:
            open_jobs = session.scalar(
                select(func.count()).select_from(Job).where(Job.status.not_in(TERMINAL))
            )
            pending = session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.status == DeliveryStatus.pending)
            )
        if not open_jobs and not pending:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, (
            f"not settled in {timeout} s: {open_jobs} jobs open, {pending} webhooks pending"
        )
        time.sleep(0.5)


def test_no_job_credit_or_webhook_is_lost_or_doubled_through_kills_a_freeze_and_a_restart(
    private_postgres: PrivateCluster,
    tiny_digits: RegisteredModel,
    mlflow_server: str,
    tmp_path: Path,
) -> None:
    size, scale = chosen_scale()
    began = time.monotonic()
    # A frozen process keeps the row locks of a transaction it was in (SKIP LOCKED claims and
    # recovery then pass its job by): the server ends such a session, as a production
    # database for the queue should be set to (README, Production).
    url = private_postgres.create_database("goshen")
    private_postgres.configure(idle_in_transaction_session_timeout="5s")
    engine = make_engine(url)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    model, accounts = _seed(sessions, tiny_digits, scale)
    granted = {account.user_id: scale.affordable * PRICE_MICROS for account in accounts}
    env = platform_env(url, tmp_path / "home", mlflow_server)
    with (
        flaky_receiver(FAILURE_RATE, seed=15) as receiver,
        running_platform(env, tmp_path) as platform,
    ):
        for port in (free_port(), free_port()):
            platform.start_api(port)
        workers = [platform.start("worker") for _ in range(3)]
        platform.start("webhooks")
        platform.wait_until_apis_answer()
        platform.wait_until_registered(sessions, workers)
        started = time.monotonic()
        print(f"chaos: {size} run; platform up {started - began:.1f} s into the test", flush=True)
        halt = threading.Event()  # a failed fault stops the clients, too
        with ThreadPoolExecutor(1) as background:
            traffic = background.submit(
                submit_all,
                _submissions(model, accounts, scale, receiver.url),
                platform.api_urls,
                scale.clients,
                scale.timeout,
                halt,
            )
            try:
                record = unleash(
                    list(scale.plan),
                    platform,
                    sessions,
                    private_postgres,
                    submitting=lambda: not traffic.done(),
                    pause=scale.pause,
                )
            except BaseException:
                halt.set()
                raise
            submitted = traffic.result(scale.timeout)
        settled = _wait_until_settled(sessions, scale.timeout)
        drained = time.monotonic() - started
        exits = platform.stop()
        receipts = receiver.snapshot()
        verdict = check(sessions, submitted, receipts, granted)
        verdict.figures.update(
            size=size,
            scale=asdict(scale),
            jobs_held_by_killed_workers=[len(kill["jobs"]) for kill in record.kills],
            freezes=record.freezes,
            restarts=record.restarts,
            receiver_attempts=receiver.attempts,
            receiver_answers=dict(receiver.answers),
            idle_sessions_ended=private_postgres.log.read_text().count(
                "idle-in-transaction timeout"
            ),
            seconds_to_settle_after_faults=round(settled, 1),
            seconds_from_first_submission=round(drained, 1),
            wall_seconds=round(time.monotonic() - began, 1),
            exit_codes=exits,
        )
    engine.dispose()
    report = os.environ.get("GOSHEN_TEST_CHAOS_REPORT")
    if report:
        Path(report).write_text(json.dumps(verdict.figures, indent=2, default=str))
    print(json.dumps(verdict.figures, indent=2, default=str))
    assert not verdict.violations, "\n".join(verdict.violations)
    assert verdict.figures["statuses"].get(JobStatus.succeeded.value), "no job succeeded"
