"""A job canceled at any point of its batch: its progress events go strictly up, no step twice,
and it ends canceled.

Real components throughout: the tiny random-weights digits model from the test registry, the
worker's own claim and `run_batch` (with its BatchReporter thread), the API's cancel route, and
the database of each backend. The test steps in only between denoising steps: after asking for
the cancel it waits until the reporter has ended the job, so every point of a batch is hit,
however the reporter's ticks fall on this machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from itertools import pairwise
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import Job, JobEvent, JobStatus, Model
from goshen.runtimes.base import ImageGenerator, StepReport
from goshen.runtimes.inputs import GenerationInput
from goshen.storage import make_store
from serving.app import create_app
from serving.worker.context import WorkerContext
from serving.worker.generator_cache import GeneratorCache, ModelSource, RegistrySource
from serving.worker.loop import claim, new_worker_id, register_worker
from serving.worker.runner import run_batch
from tests.fixtures.accounts import Account
from tests.serving.worker.jobs import queue_jobs

STEPS = 12
BEFORE, AFTER = 0, STEPS + 1  # cancel before the first step; after the last (while storing)


class _CancelAt:
    """The registry's models, with `cancel()` called before step `at` + 1 (0: before the first
    step; STEPS + 1: once the images are made, while the batch stores and writes them)."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.at = -1
        self.cancel: Callable[[], None] = lambda: None

    def resolve(self, model: Model) -> str:
        return self.source.resolve(model)

    def load(self, model: Model, version: str) -> ImageGenerator:
        generator = self.source.load(model, version)
        outer = self

        class Canceling:
            device = generator.device

            def generate(
                self, inputs: Sequence[GenerationInput], on_step: StepReport
            ) -> list[list[Image.Image] | None]:
                if outer.at == BEFORE:
                    outer.cancel()

                def step(index: int, total: int) -> AbstractSet[int]:
                    stopped = on_step(index, total)
                    if index == outer.at:
                        outer.cancel()
                    return stopped

                results = generator.generate(inputs, step)
                if outer.at == AFTER:
                    outer.cancel()
                return results

            def close(self) -> None:
                generator.close()

        return Canceling()


@pytest.fixture
def batches(
    serving_settings: Settings, sessions: sessionmaker[Session], developer: Account
) -> Iterator[Callable[..., None]]:
    """`run(job_ids, cancel_id, at)`: claim the queued jobs as one batch and run it, the API
    canceling `cancel_id` at `at` and waiting (before the next step) until the job has ended."""
    settings = Settings(
        **{**serving_settings.model_dump(), "_env_file": None, "worker_batch_wait_seconds": 0}
    )
    source = _CancelAt(RegistrySource(settings))
    worker = register_worker(sessions, new_worker_id())
    generators = GeneratorCache(source, 1)
    context = WorkerContext(settings, sessions, make_store(settings), worker.id, generators)
    with TestClient(create_app(settings)) as api:

        def run(job_ids: list[str], cancel_id: str, at: int, wait: bool = True) -> None:
            def cancel() -> None:
                answer = api.post(f"/v1/jobs/{cancel_id}/cancel", headers=developer.headers)
                assert answer.status_code == 200, answer.text
                if wait:
                    _wait_ended(sessions, cancel_id)

            source.at, source.cancel = at, cancel
            (claims,) = claim(context)  # one batch: nothing ran here yet, so no prefetch
            assert sorted(c.job_id for c in claims) == sorted(job_ids)
            run_batch(context, claims)

        yield run
    generators.close()


def _wait_ended(sessions: sessionmaker[Session], job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _job(sessions, job_id).status == JobStatus.running:
        assert time.monotonic() < deadline, f"job {job_id} still runs {timeout} s after its cancel"
        time.sleep(0.02)


def _job(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        return session.get_one(Job, job_id)


def _steps(sessions: sessionmaker[Session], job_id: str) -> list[int]:
    with sessions() as session:
        events = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.type == "progress")
            .order_by(JobEvent.id)
        ).all()
    return [event.data["step"] for event in events]


def _assert_goes_up(steps: list[int], context: Any) -> None:
    assert all(a < b for a, b in pairwise(steps)), (context, steps)


def test_a_multi_image_job_canceled_at_any_point_of_its_batch_never_repeats_progress(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    batches: Callable[..., None],
) -> None:
    for at in range(BEFORE, AFTER):
        (job_id,) = queue_jobs(
            sessions, developer, digits_model, num_images=16, num_inference_steps=STEPS
        )
        batches([job_id], job_id, at)
        job, steps = _job(sessions, job_id), _steps(sessions, job_id)
        assert job.status == JobStatus.canceled, (at, job.status, job.error)
        _assert_goes_up(steps, at)
        # Every step the job ran before its cancel was seen is reported.
        assert steps[: max(at, 0)] == list(range(1, at + 1)), (at, steps)
        assert not steps or (job.progress or {}).get("step") == steps[-1]


def test_one_job_canceled_at_any_point_of_a_batch_of_several(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    batches: Callable[..., None],
) -> None:
    for at in range(BEFORE, AFTER):
        ids = queue_jobs(
            sessions, developer, digits_model, 3, num_images=2, num_inference_steps=STEPS
        )
        batches(ids, ids[1], at)
        jobs = [_job(sessions, job_id) for job_id in ids]
        assert [job.status for job in jobs] == [
            JobStatus.succeeded,
            JobStatus.canceled,
            JobStatus.succeeded,
        ], (at, [job.error for job in jobs])
        for job_id in ids[::2]:
            assert _steps(sessions, job_id) == list(range(1, STEPS + 1)), at
        _assert_goes_up(_steps(sessions, ids[1]), at)


def test_a_cancel_while_the_batch_stores_and_writes_its_end_never_repeats_progress(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    batches: Callable[..., None],
) -> None:
    """Canceled once its images are made: it ends canceled if the reporter saw the cancel
    before the batch's last transaction, else it succeeded; either way progress went up."""
    (job_id,) = queue_jobs(sessions, developer, digits_model, num_images=16, num_inference_steps=8)
    batches([job_id], job_id, 8 + 1, wait=False)
    job = _job(sessions, job_id)
    assert job.status in {JobStatus.canceled, JobStatus.succeeded}
    assert _steps(sessions, job_id) == list(range(1, 9))


def test_the_event_stream_of_a_canceled_job_goes_up_step_by_step(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    batches: Callable[..., None],
) -> None:
    (job_id,) = queue_jobs(sessions, developer, digits_model, num_images=16, num_inference_steps=40)
    batches([job_id], job_id, 1)
    with (
        TestClient(create_app(serving_settings)) as api,
        api.stream("GET", f"/v1/jobs/{job_id}/events", headers=developer.headers) as stream,
    ):
        events = list(_server_sent(stream.iter_lines()))
    steps = [data["step"] for kind, data in events if kind == "progress"]
    assert steps == _steps(sessions, job_id) and steps[0] == 1
    _assert_goes_up(steps, events)
    assert events[-1] == ("done", {"status": "canceled"})


def test_a_cancel_whose_end_failed_to_commit_is_ended_by_the_next_write(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    batches: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commit of the reporter's transaction that ends the canceled job fails once (the
    database dropped the connection; injected, as a real drop cannot be timed to that commit):
    the job is not taken for ended, the next write ends it, and its progress still goes up."""
    from serving.worker import reporter

    real_end, armed, failed = reporter.end_early, [False], list[bool]()

    def arming(*args: Any) -> None:
        real_end(*args)
        armed[0] = not failed

    def fail_once(session: Session) -> None:
        if armed[0]:
            armed[0] = False
            failed.append(True)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(reporter, "end_early", arming)
    event.listen(sessions, "before_commit", fail_once)
    try:
        (job_id,) = queue_jobs(
            sessions, developer, digits_model, num_images=4, num_inference_steps=8
        )
        batches([job_id], job_id, 2)
    finally:
        event.remove(sessions, "before_commit", fail_once)
    assert failed, "the injected failure did not happen"
    job, steps = _job(sessions, job_id), _steps(sessions, job_id)
    assert job.status == JobStatus.canceled
    _assert_goes_up(steps, steps)
    assert steps[:2] == [1, 2]


def _server_sent(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield kind, json.loads(line.removeprefix("data: "))
