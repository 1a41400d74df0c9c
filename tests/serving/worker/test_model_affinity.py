"""Model-aware claims across workers: each worker keeps the model it has loaded, and no job waits
for an affine worker longer than GOSHEN_WORKER_AFFINITY_SECONDS.

The workers are the real loops on the real models (tiny random digits models in the test MLflow
registry); their model source is wrapped to record what each worker loads and generates (the job
row forgets its worker when it ends), and to hold a batch at a gate so a test can keep a worker
busy for as long as it needs, however fast this machine is.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, JobStatus, Model, Worker, WorkerStatus, utcnow
from goshen.storage import make_store
from serving.jobs.claim import affinity_for, claim_affine, claim_batch
from serving.jobs.effects import JobEffects
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel
from tests.serving.worker.jobs import has_ended, queue_jobs, wait_for

GATE_SECONDS = 60


class Recorded:
    """A worker's model source that records its loads and generated images per model id, and
    waits at `gate` (set: open) before each batch, having set `entered`."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.loads: list[str] = []
        self.generated: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def resolve(self, model: Model) -> str:
        return str(self.source.resolve(model))

    def load(self, model: Model, version: str) -> Any:
        generator = self.source.load(model, version)
        self.loads.append(model.id)
        recorder, model_id = self, model.id

        class Gated:
            device = generator.device

            def generate(self, inputs: Sequence[Any], on_step: Any) -> Any:
                recorder.entered.set()
                recorder.gate.wait(GATE_SECONDS)
                recorder.generated[model_id] += len(inputs)
                return generator.generate(inputs, on_step)

            def close(self) -> None:
                generator.close()

        return Gated()


@pytest.fixture
def start_recorded(serving_settings: Settings) -> Iterator[Callable[..., Recorded]]:
    """Start a worker loop in a thread on a Recorded registry source; stopped after the test."""
    from serving.worker.generator_cache import RegistrySource
    from serving.worker.loop import run_worker

    running: list[tuple[threading.Thread, threading.Event, Recorded]] = []

    def start(**overrides: object) -> Recorded:
        settings = Settings(
            **{
                **serving_settings.model_dump(),
                "_env_file": None,
                # Batches wait at gates without reporting steps: leases must outlast that.
                "job_lease_seconds": 120,
                "worker_model_cache_size": 1,
                **overrides,
            }
        )
        stop = threading.Event()
        source = Recorded(RegistrySource(settings))
        thread = threading.Thread(target=run_worker, args=(settings, stop, source), daemon=True)
        thread.start()
        running.append((thread, stop, source))
        return source

    yield start
    for _, stop, source in running:
        stop.set()
        source.gate.set()
    for thread, _, _ in running:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a worker did not stop"


def _two_models(
    make_model: Callable[..., Model], register_digits: Callable[[str], RegisteredModel]
) -> list[Model]:
    models = []
    for _ in range(2):
        registered = register_digits(f"tiny-affinity-{secrets.token_hex(3)}")
        models.append(make_model(registered.name, registered.version))
    return models


def _warm_up(
    sessions: sessionmaker[Session],
    account: Account,
    models: list[Model],
    workers: list[Recorded],
) -> dict[str, Recorded]:
    """One job per model while every worker waits at its gate until each has entered a batch:
    each worker loads one model. Which worker has which model: returned by model id."""
    for worker in workers:
        worker.gate.clear()
    ids = [queue_jobs(sessions, account, model)[0] for model in models]
    for worker in workers:
        assert worker.entered.wait(GATE_SECONDS), "a worker took no warm-up job"
    for worker in workers:
        worker.gate.set()
    jobs = wait_for(sessions, ids, has_ended)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 2, [j.error for j in jobs]
    holders = {worker.loads[0]: worker for worker in workers}
    assert sorted(holders) == sorted(model.id for model in models), "each loads one model"
    return holders


def test_each_worker_keeps_its_model_and_no_job_waits_past_the_delay(
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    register_digits: Callable[[str], RegisteredModel],
    start_recorded: Callable[..., Recorded],
    client: TestClient,
    admin: Account,
) -> None:
    delay = 10.0
    workers = [start_recorded(worker_affinity_seconds=delay) for _ in range(2)]
    models = _two_models(make_model, register_digits)
    holders = _warm_up(sessions, developer, models, workers)
    listed = client.get("/v1/admin/workers", headers=admin.headers).json()["data"]
    shown = {tuple(m["model_id"] for m in view["loaded_models"]): view for view in listed}
    for model in models:
        view = shown[(model.id,)]  # its load was reported at once, not at the next beat
        assert view["device"] in ("cpu", "cuda:0") and view["memory_used_bytes"] > 0, view

    ids = []
    for seed in range(4):
        for model in models:
            ids += queue_jobs(sessions, developer, model, seed=seed)
    jobs = wait_for(sessions, ids, has_ended)

    assert [job.status for job in jobs] == [JobStatus.succeeded] * len(ids)
    for model in models:
        worker = holders[model.id]
        assert worker.loads == [model.id], "a worker loaded the other worker's model"
        assert worker.generated == {model.id: 5}, "a job ran where its model was not loaded"
    waits = [job.queue_seconds or 0.0 for job in jobs]
    assert max(waits) <= delay + 10, waits


def test_with_its_worker_busy_a_job_goes_to_another_worker_after_the_delay(
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    register_digits: Callable[[str], RegisteredModel],
    start_recorded: Callable[..., Recorded],
) -> None:
    delay = 1.0
    workers = [start_recorded(worker_affinity_seconds=delay) for _ in range(2)]
    first, second = _two_models(make_model, register_digits)
    holders = _warm_up(sessions, developer, [first, second], workers)
    busy, other = holders[first.id], holders[second.id]

    busy.entered.clear()
    busy.gate.clear()
    (held,) = queue_jobs(sessions, developer, first)
    assert busy.entered.wait(GATE_SECONDS), "the worker with the model did not take its job"
    (waiting,) = queue_jobs(sessions, developer, first, seed=2)
    (job,) = wait_for(sessions, [waiting], has_ended)
    busy.gate.set()
    wait_for(sessions, [held], has_ended)

    assert job.status == JobStatus.succeeded, job.error
    assert other.loads == [second.id, first.id], "the free worker took the job, loading it"
    assert job.queue_seconds is not None
    assert delay - 0.5 <= job.queue_seconds <= delay + 10, job.queue_seconds


# Claims themselves, on the database: other workers are rows as their heartbeats write them.


@pytest.fixture
def effects(serving_settings: Settings) -> JobEffects:
    return JobEffects(make_store(serving_settings), serving_settings.api_url)


def _worker_row(sessions: sessionmaker[Session], model: Model, beat_seconds_ago: float = 0) -> str:
    worker_id = f"other-{secrets.token_hex(3)}"
    with session_scope(sessions) as session:
        session.add(
            Worker(
                id=worker_id,
                host="elsewhere",
                pid=1,
                device_name="test",
                device_memory_bytes=None,
                device="cuda:1",
                loaded_models=[{"model": model.name, "model_id": model.id, "version": "1"}],
                status=WorkerStatus.busy,
                heartbeat_at=utcnow() - timedelta(seconds=beat_seconds_ago),
            )
        )
    return worker_id


def _claim(
    sessions: sessionmaker[Session],
    effects: JobEffects,
    own: frozenset[str],
    seconds_later: float = 0,
) -> list[str]:
    now = utcnow() + timedelta(seconds=seconds_later)
    with session_scope(sessions) as session:
        affinity = affinity_for(session, "this", own, seconds=2.0, stale_after_seconds=1.5, now=now)
        claims = claim_batch(
            session, "this", effects, max_images=1, lease_seconds=30, now=now, affinity=affinity
        )
    return [claim.job_id for claim in claims]


def test_a_job_for_a_model_no_other_live_worker_has_is_taken_at_once(
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    effects: JobEffects,
) -> None:
    loaded, alone, stale = make_model(), make_model(), make_model()
    _worker_row(sessions, loaded)
    _worker_row(sessions, stale, beat_seconds_ago=60)
    held = queue_jobs(sessions, developer, loaded)
    ids = queue_jobs(sessions, developer, alone) + queue_jobs(sessions, developer, stale)
    assert _claim(sessions, effects, frozenset()) == ids[:1]
    assert _claim(sessions, effects, frozenset()) == ids[1:], "a stale worker holds nothing"
    assert _claim(sessions, effects, frozenset()) == [], "held for the worker that has it"
    assert _claim(sessions, effects, frozenset(), seconds_later=2.5) == held, "not past delay"


def test_a_claim_prefers_its_own_model_until_the_oldest_job_is_overdue(
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    effects: JobEffects,
) -> None:
    mine, theirs, nobodys = make_model(), make_model(), make_model()
    _worker_row(sessions, theirs)
    older = queue_jobs(sessions, developer, nobodys)
    own = queue_jobs(sessions, developer, mine)
    assert _claim(sessions, effects, frozenset({mine.id})) == own
    assert _claim(sessions, effects, frozenset({mine.id})) == older
    later = queue_jobs(sessions, developer, mine)
    overdue = queue_jobs(sessions, developer, theirs)
    with session_scope(sessions) as session:
        job = session.get_one(Job, overdue[0])
        job.run_after = utcnow() - timedelta(seconds=5)
    assert _claim(sessions, effects, frozenset({mine.id})) == overdue, "the oldest, overdue"
    assert _claim(sessions, effects, frozenset({mine.id})) == later


def test_a_held_back_job_is_left_unlocked_for_the_worker_that_has_its_model(
    sessions: sessionmaker[Session],
    settings: Settings,
    developer: Account,
    make_model: Callable[..., Model],
    effects: JobEffects,
) -> None:
    """The claim that holds a job back never locks its row, while the claim's transaction is
    still open: it reads which workers hold which models before it locks anything (PostgreSQL
    row locks; SQLite serializes whole transactions instead)."""
    if not settings.resolved_database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite serializes claims")
    theirs = make_model()
    other = _worker_row(sessions, theirs)
    held = queue_jobs(sessions, developer, theirs)
    with session_scope(sessions) as session:
        taken = claim_affine(
            session,
            "this",
            effects,
            own=frozenset(),
            affinity_seconds=30,
            stale_after_seconds=30,
            max_images=1,
            lease_seconds=30,
        )
        assert taken == []
        with session_scope(sessions) as elsewhere:
            claims = claim_batch(elsewhere, other, effects, max_images=1, lease_seconds=30)
        assert [claim.job_id for claim in claims] == held
