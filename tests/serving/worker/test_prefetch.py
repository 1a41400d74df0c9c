"""A worker that runs a model fast claims the batches that follow a full one with it (prefetch):
how claimed jobs split into batches, when a claim brings more batches and when it does not, and
how the batches run back to back, end together, and go back to the queue when the worker stops or
the batches run longer than the leases allow.

The queue, the claims, the worker's own `claim` and `run_batches` (with their BatchReporters) and
the database of each backend are the real ones; only the model is made up: a generator that draws
blank images after one step, so that batches take no time unless a test makes one slow.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, JobEvent, JobStatus, Model, UsageEvent
from goshen.runtimes.base import ImageGenerator, StepReport
from goshen.runtimes.devices import cpu_device
from goshen.runtimes.inputs import GenerationInput
from goshen.storage import make_store
from serving.jobs import transitions
from serving.jobs.claim import Claim, split_batches
from serving.worker.context import WorkerContext, WorkerStopping
from serving.worker.generator_cache import GeneratorCache
from serving.worker.loop import claim, new_worker_id, register_worker
from serving.worker.reporter import STOPPED
from serving.worker.runner import run_batches
from tests.fixtures.accounts import Account
from tests.serving.worker.jobs import queue_jobs

MAX_BATCH = 8
# What a worker's last batch of a model took: 0.05 s of prefetch (the default) fits 50 such
# batches (16 at most) of a fast model, and 1 of a slow one, which is no prefetch at all.
FAST, SLOW = 0.001, 0.03


class BlankDigits:
    """A model source whose every version draws blank 8x8 images after one step. It records
    the size of each batch it generates; `during(number)` runs inside batch `number` (from 1)
    before its step: where a test stops the worker or makes a batch slow."""

    def __init__(self) -> None:
        self.generated: list[int] = []
        self.during: Callable[[int], None] = lambda number: None

    def resolve(self, model: Model) -> str:
        return model.live_version or "1"

    def load(self, model: Model, version: str) -> ImageGenerator:
        return _BlankGenerator(self)


class _BlankGenerator:
    device = cpu_device()

    def __init__(self, source: BlankDigits) -> None:
        self.source = source

    def generate(
        self, inputs: Sequence[GenerationInput], on_step: StepReport
    ) -> list[list[Image.Image] | None]:
        self.source.generated.append(len(inputs))
        self.source.during(len(self.source.generated))
        stopped = on_step(1, 1)
        return [
            None if index in stopped else [Image.new("L", (8, 8))] * request.num_images
            for index, request in enumerate(inputs)
        ]

    def close(self) -> None:
        pass


Worker = Callable[..., tuple[WorkerContext, BlankDigits]]


@pytest.fixture
def worker(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Worker]:
    """`worker(**settings)`: a registered worker's context (batches of at most MAX_BATCH
    images, no wait for compatible jobs) on a BlankDigits source, and that source."""
    caches: list[GeneratorCache] = []

    def make(**overrides: object) -> tuple[WorkerContext, BlankDigits]:
        values = {"worker_max_batch_size": MAX_BATCH, "worker_batch_wait_seconds": 0, **overrides}
        worker_settings = Settings(**{**settings.model_dump(), "_env_file": None, **values})
        source = BlankDigits()
        generators = GeneratorCache(source, 1)
        caches.append(generators)
        registered = register_worker(sessions, new_worker_id())
        store = make_store(worker_settings)
        context = WorkerContext(worker_settings, sessions, store, registered.id, generators)
        return context, source

    yield make
    for generators in caches:
        generators.close()


def _claim(images: int = 1, key: str | None = "k") -> Claim:
    now = datetime.now(UTC)
    return Claim(
        job_id=f"job_{secrets.token_hex(4)}",
        token=secrets.token_hex(16),
        attempt=1,
        user_id="usr_1",
        api_key_id=None,
        model_id="mdl_1",
        model_version="1",
        input={"digit": 1, "num_images": images},
        created_at=now,
        started_at=now,
        timeout_seconds=None,
        batch_key=key,
    )


def _ids(batches: Sequence[Sequence[Claim]]) -> list[list[str]]:
    return [[claim.job_id for claim in batch] for batch in batches]


def _jobs(sessions: sessionmaker[Session], ids: Sequence[str]) -> list[Job]:
    with sessions() as session:
        return [session.get_one(Job, job_id) for job_id in ids]


def _usage_per_job(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        rows = session.execute(
            select(UsageEvent.job_id, func.count()).group_by(UsageEvent.job_id)
        ).all()
    return {str(job_id): count for job_id, count in rows}


def _back_in_the_queue(job: Job) -> bool:
    """Queued again as if never claimed: its attempt uncounted, no worker's claim on it."""
    return (job.status, job.attempt, job.lease_owner, job.claim_token) == (
        JobStatus.queued,
        0,
        None,
        None,
    )


# split_batches


def test_claims_split_by_batch_key_in_order_within_the_batch_size() -> None:
    a1, b1, a2, a3, b2 = (
        _claim(3, "a"),
        _claim(2, "b"),
        _claim(3, "a"),
        _claim(3, "a"),
        _claim(2, "b"),
    )
    assert _ids(split_batches([a1, b1, a2, a3, b2], max_images=8)) == _ids(
        [[a1, a2], [b1, b2], [a3]]
    )


def test_a_claim_without_a_batch_key_runs_alone() -> None:
    a1, alone, a2, other = _claim(key="a"), _claim(key=None), _claim(key="a"), _claim(key=None)
    assert _ids(split_batches([a1, alone, a2, other], max_images=8)) == _ids(
        [[a1, a2], [alone], [other]]
    )


def test_a_claim_too_big_for_any_batch_with_room_starts_its_own() -> None:
    """A job bigger than the batch size still runs, in a batch of its own; one that does not
    fit the room left in its key's batch starts the next, and later small ones still fill in."""
    small, oversized, big, tiny = _claim(2), _claim(12), _claim(7), _claim(1)
    assert _ids(split_batches([small, oversized, big, tiny], max_images=8)) == _ids(
        [[small, tiny], [oversized], [big]]
    )


# claim


def test_a_full_batch_of_a_fast_model_brings_the_batches_that_follow(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    ids = queue_jobs(sessions, developer, catalog_model, 20)
    context, _ = worker()
    context.batch_seconds[catalog_model.id] = FAST
    batches = claim(context)
    assert _ids(batches) == [ids[:8], ids[8:16], ids[16:]]
    tokens = {claim.job_id: claim.token for batch in batches for claim in batch}
    assert len(set(tokens.values())) == 20
    for job in _jobs(sessions, ids):
        assert (job.status, job.lease_owner, job.attempt) == (
            JobStatus.running,
            context.worker_id,
            1,
        )
        assert job.claim_token == tokens[job.id]


def test_the_batches_that_follow_are_of_the_first_batchs_key(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    """The model's last full batch says how long one of these takes; jobs with other
    parameters (more steps, another size) may take far longer, and stay for other workers."""
    first = queue_jobs(sessions, developer, catalog_model, 8, num_inference_steps=4)
    other_key = queue_jobs(sessions, developer, catalog_model, 3, num_inference_steps=8)
    same_key = queue_jobs(sessions, developer, catalog_model, 2, num_inference_steps=4)
    context, _ = worker()
    context.batch_seconds[catalog_model.id] = FAST
    assert _ids(claim(context)) == [first, same_key]
    assert all(_back_in_the_queue(job) for job in _jobs(sessions, other_key))


def test_the_batches_that_follow_are_of_the_same_model_version(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    """Jobs queued before and after a deploy run on different versions: a batch of one version
    never brings jobs of the other, which the loaded generator would run on the wrong weights."""
    first = queue_jobs(sessions, developer, catalog_model, 8)
    catalog_model.live_version = f"{catalog_model.live_version}-next"  # as a deploy leaves it
    queue_jobs(sessions, developer, catalog_model, 8)
    context, _ = worker()
    context.batch_seconds[catalog_model.id] = FAST
    assert _ids(claim(context)) == [first]


@pytest.mark.parametrize(
    ("prefetch_seconds", "last_batch_seconds"),
    [(0.0, FAST), (0.05, None), (0.05, SLOW)],
    ids=["prefetch-off", "model-never-ran-here", "model-too-slow"],
)
def test_no_batches_follow_when_prefetch_is_off_or_the_model_is_not_known_to_be_fast(
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
    worker: Worker,
    prefetch_seconds: float,
    last_batch_seconds: float | None,
) -> None:
    """A model that never ran on this worker may have to load first: its time is unknown."""
    ids = queue_jobs(sessions, developer, catalog_model, 20)
    context, _ = worker(worker_prefetch_seconds=prefetch_seconds)
    if last_batch_seconds is not None:
        context.batch_seconds[catalog_model.id] = last_batch_seconds
    assert _ids(claim(context)) == [ids[:8]]
    assert all(_back_in_the_queue(job) for job in _jobs(sessions, ids[8:]))


def test_no_batches_follow_a_batch_that_is_not_full(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    """Fewer compatible jobs than a batch holds: the queue has nothing more to run together."""
    few = queue_jobs(sessions, developer, catalog_model, 3, num_inference_steps=4)
    others = queue_jobs(sessions, developer, catalog_model, 12, num_inference_steps=8)
    context, _ = worker()
    context.batch_seconds[catalog_model.id] = FAST
    assert _ids(claim(context)) == [few]
    assert all(_back_in_the_queue(job) for job in _jobs(sessions, others))


# run_batches


def _events(sessions: sessionmaker[Session], job_id: str) -> list[tuple[str, Any]]:
    with sessions() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    return [(event.type, event.data.get("status")) for event in rows]


SUCCEEDED_EVENTS = [
    ("status", "queued"),
    ("status", "running"),
    ("log", None),  # generating on ...
    ("progress", None),
    ("log", None),  # generated 1 images in ...
    ("output", None),
    ("status", "succeeded"),
    ("done", "succeeded"),
]


def test_prefetched_batches_run_back_to_back_and_end_together(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    ids = queue_jobs(sessions, developer, catalog_model, 20)
    context, source = worker()
    context.batch_seconds[catalog_model.id] = FAST
    batches = claim(context)
    assert run_batches(context, batches) == batches
    assert source.generated == [8, 8, 4]
    jobs = _jobs(sessions, ids)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 20, [j.error for j in jobs]
    assert len({job.completed_at for job in jobs}) == 1  # in one transaction, at one time
    assert _usage_per_job(sessions) == dict.fromkeys(ids, 1)
    for job in jobs:
        assert _events(sessions, job.id) == SUCCEEDED_EVENTS
        assert job.output is not None and len(job.output["images"]) == 1


def test_a_worker_stopping_in_the_second_batch_ends_the_first_and_releases_the_rest(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    ids = queue_jobs(sessions, developer, catalog_model, 20)
    context, source = worker()
    context.batch_seconds[catalog_model.id] = FAST

    def stop_in_the_second(number: int) -> None:
        if number == 2:
            raise WorkerStopping("the worker's drain period ended")

    source.during = stop_in_the_second
    batches = claim(context)
    with pytest.raises(WorkerStopping):
        run_batches(context, batches)
    assert source.generated == [8, 8]  # the third batch never started
    first, stopped, unstarted = _ids(batches)
    assert [*first, *stopped, *unstarted] == ids
    assert [job.status for job in _jobs(sessions, first)] == [JobStatus.succeeded] * 8
    assert _usage_per_job(sessions) == dict.fromkeys(first, 1)
    for job in _jobs(sessions, [*stopped, *unstarted]):
        assert _back_in_the_queue(job), (job.id, job.status, job.attempt)
        assert "released:" in job.logs
        assert _events(sessions, job.id)[-1] == ("status", "queued")


def test_a_slow_batch_renews_the_leases_of_the_batches_waiting_on_it(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    """The second batch runs past the lease the claim gave every job: its reporter renews the
    first batch's (ran, waiting for the end) and the third's (not started), so another worker's
    recovery pass then takes none of them, and all 20 end succeeded on their first attempt."""
    ids = queue_jobs(sessions, developer, catalog_model, 20)
    context, source = worker(job_lease_seconds=3)
    context.batch_seconds[catalog_model.id] = FAST
    recovered: list[str] = []

    def slow_second(number: int) -> None:
        if number == 2:
            time.sleep(3.5)
            with session_scope(sessions) as session:
                stalled = transitions.recover_stalled(
                    session, context.effects, retry_base_seconds=0.01
                )
                recovered.extend(job.id for job in stalled)

    source.during = slow_second
    batches = claim(context)
    assert len(batches) == 3
    run_batches(context, batches)
    assert recovered == []
    jobs = _jobs(sessions, ids[:16])  # the third batch started after a third of the lease
    assert [(job.status, job.attempt) for job in jobs] == [(JobStatus.succeeded, 1)] * 16
    assert all(_back_in_the_queue(job) for job in _jobs(sessions, ids[16:]))


def test_a_worker_told_to_stop_starts_no_more_of_its_batches(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    ids = queue_jobs(sessions, developer, catalog_model, 20)
    context, source = worker()
    context.batch_seconds[catalog_model.id] = FAST
    source.during = lambda number: context.stop.set()  # SIGTERM while the first batch runs
    batches = claim(context)
    assert run_batches(context, batches) == batches[:1]
    assert source.generated == [8]
    jobs = _jobs(sessions, ids)
    assert [job.status for job in jobs[:8]] == [JobStatus.succeeded] * 8
    for job in jobs[8:]:
        assert _back_in_the_queue(job), (job.id, job.status, job.attempt)
        assert STOPPED in job.logs


def test_a_batch_that_raises_past_its_own_handling_still_ends_the_others(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    """What the batch's own failure handling does not catch (here an interrupt; in life a
    database error while it ends its jobs) leaves that batch to recovery, but not the others:
    the batch that ran is ended and the one not started given back before it propagates."""
    ids = queue_jobs(sessions, developer, catalog_model, 20)
    context, source = worker()
    context.batch_seconds[catalog_model.id] = FAST

    def interrupt_the_second(number: int) -> None:
        if number == 2:
            raise KeyboardInterrupt

    source.during = interrupt_the_second
    batches = claim(context)
    with pytest.raises(KeyboardInterrupt):
        run_batches(context, batches)
    jobs = _jobs(sessions, ids)
    assert [job.status for job in jobs[:8]] == [JobStatus.succeeded] * 8
    assert [job.status for job in jobs[8:16]] == [JobStatus.running] * 8  # for recovery
    assert all(_back_in_the_queue(job) for job in jobs[16:])


def test_batches_left_when_a_third_of_the_lease_has_passed_go_back_to_the_queue(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model, worker: Worker
) -> None:
    """Once GOSHEN_JOB_LEASE_SECONDS / 3 have passed (here a first batch slower than the
    model's last), the batches that ran end and those not started are released, for other
    workers to run."""
    ids = queue_jobs(sessions, developer, catalog_model, 20)
    context, source = worker(job_lease_seconds=3)
    context.batch_seconds[catalog_model.id] = FAST
    source.during = lambda number: time.sleep(1.2) if number == 1 else None
    batches = claim(context)
    assert len(batches) == 3
    assert run_batches(context, batches) == batches[:1]
    assert source.generated == [8]
    jobs = _jobs(sessions, ids)
    assert [job.status for job in jobs[:8]] == [JobStatus.succeeded] * 8
    assert all(_back_in_the_queue(job) for job in jobs[8:])
    assert _usage_per_job(sessions) == dict.fromkeys(ids[:8], 1)
