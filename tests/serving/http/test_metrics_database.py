"""The figures the API's /metrics reads from the database at scrape time move with the rows:
the queue by model, workers' heartbeats and memory, the webhook backlog; a database that does
not answer leaves them out of a scrape that still answers; a replica rereads them only once
they are `seconds` old."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from goshen.catalog import CUSTOMER_MODELS_LABEL
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, session_scope
from goshen.db.models import (
    Job,
    Model,
    Visibility,
    WebhookDelivery,
    Worker,
    WorkerStatus,
    utcnow,
)
from serving.app import create_app
from serving.http.metrics import ApiMetrics
from serving.jobs.claim import claim_batch
from serving.jobs.effects import JobEffects
from tests.fixtures.accounts import Account
from tests.serving.http.metrics_scrape import Samples, samples, value
from tests.serving.webhooks.factories import make_job, queue_event
from tests.serving.worker.jobs import queue_jobs


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        client.app.state.api.metrics.figures.seconds = 0  # type: ignore[attr-defined]  # each scrape reads
        yield client


def scrape(api: TestClient) -> Samples:
    response = api.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


def test_queue_depth_running_jobs_and_oldest_due_age_follow_the_queue(
    api: TestClient,
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
    job_effects: JobEffects,
) -> None:
    name = catalog_model.name
    assert value(scrape(api), "goshen_jobs_queued", model=name) is None
    first, second = queue_jobs(sessions, developer, catalog_model, 2)
    with session_scope(sessions) as session:
        session.execute(
            update(Job).where(Job.id == first).values(run_after=utcnow() - timedelta(minutes=2))
        )
        # Waiting out a retry's backoff: queued, but not due.
        session.execute(
            update(Job).where(Job.id == second).values(run_after=utcnow() + timedelta(hours=1))
        )
    scraped = scrape(api)
    assert value(scraped, "goshen_jobs_queued", model=name) == 2
    assert 120 <= value(scraped, "goshen_jobs_queued_oldest_age_seconds", model=name) < 180  # type: ignore[operator]
    assert value(scraped, "goshen_jobs_running", model=name) is None

    with session_scope(sessions) as session:
        (claimed,) = claim_batch(session, "worker-1", job_effects, max_images=1, lease_seconds=60)
    assert claimed.job_id == first
    scraped = scrape(api)
    assert value(scraped, "goshen_jobs_queued", model=name) == 1
    assert value(scraped, "goshen_jobs_running", model=name) == 1
    assert value(scraped, "goshen_jobs_queued_oldest_age_seconds", model=name) == 0  # none due


def test_customers_models_share_one_label_that_names_neither_model_nor_owner(
    api: TestClient,
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
) -> None:
    """/metrics takes no key: a customer's model (`<user id>.<name>`) is never a label."""
    owned = []
    for number in range(2):
        model = make_model(name=f"{developer.user_id}.mine-{number}")
        with session_scope(sessions) as session:
            session.execute(
                update(Model)
                .where(Model.id == model.id)
                .values(owner_id=developer.user_id, visibility=Visibility.private)
            )
        owned.append(model)
    queue_jobs(sessions, developer, owned[0], 2)
    queue_jobs(sessions, developer, owned[1], 1)

    scraped = scrape(api)

    assert value(scraped, "goshen_jobs_queued", model=CUSTOMER_MODELS_LABEL) == 3
    assert developer.user_id not in str(scraped)


def _worker(
    sessions: sessionmaker[Session], status: WorkerStatus, age: timedelta, memory: int | None
) -> str:
    worker_id = f"host-{secrets.token_hex(3)}"
    with session_scope(sessions) as session:
        session.add(
            Worker(
                id=worker_id,
                host="host",
                pid=1,
                device_name="cpu",
                device="cpu",
                memory_used_bytes=memory,
                loaded_models=[],
                status=status,
                heartbeat_at=utcnow() - age,
            )
        )
    return worker_id


def test_workers_by_status_heartbeat_ages_and_memory(
    api: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert value(scrape(api), "goshen_workers", status="idle") == 0
    idle = _worker(sessions, WorkerStatus.idle, timedelta(seconds=1), 1000)
    busy = _worker(sessions, WorkerStatus.busy, timedelta(seconds=2), None)
    # Silent past 3 heartbeat intervals: stale, whatever it said last.
    silent = _worker(sessions, WorkerStatus.busy, timedelta(seconds=120), 3000)
    _worker(sessions, WorkerStatus.stopped, timedelta(seconds=1), 4000)  # left out
    _worker(sessions, WorkerStatus.idle, timedelta(hours=2), 5000)  # dead for long: left out
    assert 3 * settings.worker_heartbeat_seconds < 120

    scraped = scrape(api)
    counts = {s: value(scraped, "goshen_workers", status=s) for s in ("idle", "busy", "stale")}
    assert counts == {"idle": 1, "busy": 1, "stale": 1}
    assert value(scraped, "goshen_workers", status="draining") == 0
    ages = {
        worker: value(scraped, "goshen_worker_heartbeat_age_seconds", worker=worker, device="cpu")
        for worker in (idle, busy, silent)
    }
    assert 1 <= ages[idle] < 30 and 2 <= ages[busy] < 30 and 120 <= ages[silent] < 180  # type: ignore[operator]
    memory = "goshen_worker_heartbeat_memory_used_bytes"
    assert value(scraped, memory, worker=idle, device="cpu") == 1000
    assert value(scraped, memory, worker=silent, device="cpu") == 3000
    assert value(scraped, memory, worker=busy, device="cpu") is None  # never reported
    exported = {labels for name, labels in scraped if name == memory}
    assert len(exported) == 2


def test_webhook_backlog_counts_due_deliveries_and_the_oldest_ones_wait(
    api: TestClient, sessions: sessionmaker[Session]
) -> None:
    scraped = scrape(api)
    assert value(scraped, "goshen_webhook_deliveries_due") == 0
    assert value(scraped, "goshen_webhook_deliveries_oldest_due_age_seconds") == 0
    due, later = make_job(sessions, "https://a.test/hook"), make_job(sessions, "https://b.test/h")
    queue_event(sessions, due)
    queue_event(sessions, later)
    with session_scope(sessions) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == due.id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=90))
        )
        session.execute(  # a retry backing off
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == later.id)
            .values(next_attempt_at=utcnow() + timedelta(minutes=10))
        )
    scraped = scrape(api)
    assert value(scraped, "goshen_webhook_deliveries", status="pending") == 2
    assert value(scraped, "goshen_webhook_deliveries_due") == 1
    assert 90 <= value(scraped, "goshen_webhook_deliveries_oldest_due_age_seconds") < 150  # type: ignore[operator]


def test_a_replica_rereads_the_database_only_once_its_figures_are_old(
    api: TestClient, sessions: sessionmaker[Session], developer: Account, catalog_model: Model
) -> None:
    api.app.state.api.metrics.figures.seconds = 3600  # type: ignore[attr-defined]
    assert value(scrape(api), "goshen_jobs_queued", model=catalog_model.name) is None
    queue_jobs(sessions, developer, catalog_model, 1)
    assert value(scrape(api), "goshen_jobs_queued", model=catalog_model.name) is None
    api.app.state.api.metrics.figures.seconds = 0  # type: ignore[attr-defined]
    assert value(scrape(api), "goshen_jobs_queued", model=catalog_model.name) == 1


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_database_that_does_not_answer_leaves_its_figures_out(settings: Settings) -> None:
    """A real engine on a port nothing listens on: connecting fails as when PostgreSQL is down."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    engine = make_engine(f"postgresql://goshen@127.0.0.1:{port}/goshen", timeout=2)
    metrics = ApiMetrics(settings)
    metrics.requests.labels("GET", "/healthz", "200").inc()
    try:
        response = metrics.render(make_sessionmaker(engine))
    finally:
        engine.dispose()
    scraped = samples(bytes(response.body).decode())
    assert value(
        scraped, "goshen_http_requests_total", method="GET", route="/healthz", status="200"
    )
    assert not {name for name, _ in scraped if name.startswith(("goshen_jobs", "goshen_webhook"))}
