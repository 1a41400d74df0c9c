"""`goshen worker`'s loop against a real queue and a real MLflow registry with a tiny random-weights
model: jobs run in batches and succeed with their images, alike alone or batched and on either
engine; cancel and timeouts end them; a missing model, a failed batch and a database that fails for
a while are outlived."""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, JobStatus, Model, PricingUnit, UsageEvent, Visibility
from goshen.runtimes.base import ImageGenerator, StepReport
from goshen.runtimes.inputs import GenerationInput, TextToImageInput, batch_key
from serving.app import create_app
from serving.jobs import transitions
from serving.jobs.claim import Claim
from serving.jobs.effects import JobEffects
from serving.worker.context import WorkerContext
from serving.worker.generator_cache import ModelSource
from tests.fixtures.accounts import Account
from tests.serving.worker.jobs import has_ended, queue_jobs, wait_for


def test_compatible_jobs_run_as_one_batch_and_succeed_with_their_images(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
) -> None:
    ids = queue_jobs(sessions, developer, digits_model, 3, num_images=2)
    start_worker()
    jobs = wait_for(sessions, ids, has_ended)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 3, [j.error for j in jobs]
    for job in jobs:
        assert "in a batch of 3 jobs" in job.logs
        assert [image["key"] for image in job.output["images"]] == [
            f"outputs/{developer.user_id}/{job.id}/1/0.png",
            f"outputs/{developer.user_id}/{job.id}/1/1.png",
        ]
        assert job.device.startswith("cpu") and job.peak_memory_bytes > 0
        assert job.run_seconds > 0 and job.queue_seconds >= 0
        assert job.cost_micros == 2 * digits_model.price_micros
    with sessions() as session:
        usage = session.scalars(select(UsageEvent)).all()
    assert sorted(event.job_id for event in usage) == sorted(ids)
    assert {(event.images, event.unit) for event in usage} == {(2, "image")}

    with TestClient(create_app(serving_settings)) as api:
        public = api.get(f"/v1/jobs/{ids[0]}", headers=developer.headers).json()
        url = public["output"]["images"][0]["url"]
        png = api.get(url.removeprefix(serving_settings.api_url)).content
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size, image.mode) == ("PNG", (8, 8), "L")


def test_the_same_seed_gives_the_same_image_alone_or_in_a_batch(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
    tmp_path: Path,
) -> None:
    alone = queue_jobs(sessions, developer, digits_model, seed=42)
    start_worker()
    wait_for(sessions, alone, has_ended)
    batched = queue_jobs(sessions, developer, digits_model, seed=42)
    queue_jobs(sessions, developer, digits_model, seed=7, num_images=3)
    wait_for(sessions, batched, has_ended)

    def pixels(job_id: str) -> np.ndarray:
        with sessions() as session:
            key = session.get(Job, job_id).output["images"][0]["key"]
        path = serving_settings.artifacts_dir / key
        return np.asarray(Image.open(path))

    first, second = pixels(alone[0]), pixels(batched[0])
    # ONNX Runtime may pick other kernels for other batch sizes: at most one grey level apart.
    assert np.abs(first.astype(int) - second.astype(int)).max() <= 1
    assert (first != second).mean() < 0.05


def test_a_running_job_stops_within_seconds_of_its_cancel(
    job_effects: JobEffects,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
) -> None:
    (job_id,) = queue_jobs(sessions, developer, digits_model, num_inference_steps=200)
    start_worker(step_seconds=0.05)
    wait_for(sessions, [job_id], lambda job: (job.progress or {}).get("step", 0) >= 2)
    with session_scope(sessions) as session:
        transitions.request_cancel(session, job_id, job_effects)
    asked = time.monotonic()
    (job,) = wait_for(sessions, [job_id], has_ended, timeout=10)
    assert job.status == JobStatus.canceled and time.monotonic() - asked < 10
    assert job.progress["step"] < 200 and job.output is None and job.cost_micros is None
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(UsageEvent)) == 0


def test_a_job_over_its_timeout_fails_with_a_timeout_error(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
) -> None:
    (job_id,) = queue_jobs(sessions, developer, digits_model, num_inference_steps=200, timeout=0.5)
    start_worker(step_seconds=0.05)
    (job,) = wait_for(sessions, [job_id], has_ended, timeout=30)
    assert job.status == JobStatus.failed and "timed out after" in job.error
    assert job.attempt == 1  # a timeout is final, not retried


def test_the_pytorch_engine_serves_the_same_version(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
) -> None:
    ids = queue_jobs(sessions, developer, digits_model, seed=5)
    start_worker(diffusion_engine="torch")
    (job,) = wait_for(sessions, ids, has_ended)
    assert job.status == JobStatus.succeeded, job.error
    assert "(torch)" in job.device


def test_a_model_missing_from_the_registry_fails_after_its_attempts(
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    start_worker: Callable[..., threading.Event],
) -> None:
    ids = queue_jobs(sessions, developer, make_model("never-registered", "3"))
    start_worker()
    (job,) = wait_for(sessions, ids, has_ended)
    assert job.status == JobStatus.failed and "failed on the worker" in job.error
    assert len(job.attempt_errors) == job.max_attempts
    # The registry's own words stay with the attempts, for operators.
    assert all("never-registered" in entry["error"] for entry in job.attempt_errors)


def test_generated_pngs_download_only_with_a_valid_signature(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
) -> None:
    ids = queue_jobs(sessions, developer, digits_model)
    start_worker()
    wait_for(sessions, ids, has_ended)
    with TestClient(create_app(serving_settings)) as api:
        url = httpx.URL(
            api.get(f"/v1/jobs/{ids[0]}", headers=developer.headers).json()["output"]["images"][0][
                "url"
            ]
        )
        good = api.get(url.raw_path.decode())
        forged = api.get(url.copy_set_param("signature", "0" * 64).raw_path.decode())
    assert good.status_code == 200 and good.headers["content-type"] == "image/png"
    assert forged.status_code == 403


def test_a_stable_diffusion_pipeline_from_the_registry_serves_text_to_image_jobs(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    tiny_sd_pipeline: Path,
    mlflow_server: str,
    start_worker: Callable[..., threading.Event],
) -> None:
    name = f"tiny-sd-{secrets.token_hex(3)}"
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    version = registry.log_diffusers_pipeline(tiny_sd_pipeline, name).version
    with session_scope(sessions) as session:
        model = catalog.add_pipeline_entry(
            session,
            name=name,
            registered_model=name,
            version=version,
            description="",
            pricing_unit=PricingUnit.second,
            price_micros=500,
            visibility=Visibility.public,
        )
    requests = [
        TextToImageInput(prompt="a red circle", width=72, height=64, num_inference_steps=2, seed=1),
        TextToImageInput(
            prompt="a blue square", width=72, height=64, num_inference_steps=2, seed=2
        ),
    ]
    with session_scope(sessions) as session:
        ids = []
        for request in requests:
            job = Job(
                user_id=developer.user_id,
                model_id=model.id,
                model_version=version,
                input=request.model_dump(mode="json"),
                batch_key=batch_key(request),
            )
            transitions.enqueue(session, job)
            ids.append(job.id)
    start_worker()
    jobs = wait_for(sessions, ids, has_ended, timeout=120)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 2, [j.error for j in jobs]
    assert all("in a batch of 2 jobs" in job.logs for job in jobs)
    path = serving_settings.artifacts_dir / jobs[0].output["images"][0]["key"]
    image = Image.open(path)
    assert (image.size, image.mode) == ((72, 64), "RGB")
    with sessions() as session:
        usage = session.scalars(select(UsageEvent).where(UsageEvent.job_id == ids[0])).one()
    assert usage.unit == "second" and usage.quantity == pytest.approx(usage.seconds)


def test_a_job_canceled_inside_a_batch_ends_at_once_and_the_batch_goes_on(
    job_effects: JobEffects,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
) -> None:
    kept, canceled = queue_jobs(sessions, developer, digits_model, 2, num_inference_steps=60)
    start_worker(step_seconds=0.05)
    wait_for(sessions, [kept], lambda job: (job.progress or {}).get("step", 0) >= 2)
    with session_scope(sessions) as session:
        transitions.request_cancel(session, canceled, job_effects)
    (ended,) = wait_for(sessions, [canceled], has_ended, timeout=5)
    with sessions() as session:
        still = session.get(Job, kept)
    assert ended.status == JobStatus.canceled
    assert still.status == JobStatus.running and still.progress["step"] < 60
    (finished,) = wait_for(sessions, [kept], has_ended)
    assert finished.status == JobStatus.succeeded and "in a batch of 2 jobs" in finished.logs


class _FailsInBatches:
    """The registry's models, but a batch of more than one job raises (a GPU out of memory)."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source

    def resolve(self, model: Model) -> str:
        return self.source.resolve(model)

    def load(self, model: Model, version: str) -> ImageGenerator:
        generator = self.source.load(model, version)

        class Fragile:
            device = generator.device

            def generate(
                self, inputs: Sequence[GenerationInput], on_step: StepReport
            ) -> list[list[Image.Image] | None]:
                if len(inputs) > 1:
                    raise RuntimeError("CUDA out of memory")
                return generator.generate(inputs, on_step)

            def close(self) -> None:
                generator.close()

        return Fragile()


def test_a_failed_batch_runs_its_jobs_one_by_one_without_spending_attempts(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
) -> None:
    import threading

    from serving.worker.generator_cache import RegistrySource
    from serving.worker.loop import run_worker

    ids = queue_jobs(sessions, developer, digits_model, 3)
    stop = threading.Event()
    source = _FailsInBatches(RegistrySource(serving_settings))
    worker = threading.Thread(target=run_worker, args=(serving_settings, stop, source))
    worker.start()
    try:
        jobs = wait_for(sessions, ids, has_ended)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 3
    assert {job.attempt for job in jobs} == {1}  # the failed batch did not count
    assert all("each job runs alone next" in job.logs for job in jobs)


def test_a_worker_outlives_a_database_that_fails_for_a_while(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serving.worker import loop as worker

    real_claim, failures = worker.claim, iter(range(3))

    def flaky(context: WorkerContext) -> list[Claim]:
        if next(failures, None) is not None:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real_claim(context)

    monkeypatch.setattr(worker, "claim", flaky)
    ids = queue_jobs(sessions, developer, digits_model)
    start_worker()
    (job,) = wait_for(sessions, ids, has_ended)
    assert job.status == JobStatus.succeeded
