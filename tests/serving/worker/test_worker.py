"""`goshen worker` against a real queue and a real MLflow registry with a tiny random-weights model:
jobs run in batches and succeed with their images; cancel, timeouts and SIGTERM; and three worker
processes finishing 200 jobs while one of them is killed with SIGKILL mid-job."""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from goshen import catalog, registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import (
    Job,
    JobStatus,
    Model,
    PricingUnit,
    UsageEvent,
    Visibility,
    Worker,
    WorkerStatus,
    utcnow,
)
from goshen.runtimes.inputs import DigitsInput, TextToImageInput, batch_key
from serving.app import create_app
from serving.jobs import transitions

TERMINAL = {"succeeded", "failed", "canceled"}


def _workers(sessions) -> list[Worker]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return list(session.scalars(select(Worker)))


def _enqueue(  # type: ignore[no-untyped-def]
    sessions, account, model: Model, count: int = 1, timeout: float | None = None, **model_input
) -> list[str]:
    """Queue jobs the way POST /v1/generate does, without an API in between."""
    checked = DigitsInput.model_validate({"digit": 3, "seed": 1} | model_input)
    ids = []
    with session_scope(sessions) as session:
        for _ in range(count):
            job = Job(
                user_id=account.user_id,
                api_key_id=account.key_id,
                model_id=model.id,
                model_version=model.live_version,
                input=checked.model_dump(mode="json"),
                batch_key=batch_key(checked),
                timeout_seconds=timeout,
            )
            transitions.enqueue(session, job)
            ids.append(job.id)
    return ids


def _wait(
    sessions, job_ids: list[str], until: Callable[[Job], bool], timeout: float = 60
) -> list[Job]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            jobs = [session.get(Job, job_id) for job_id in job_ids]
        if all(until(job) for job in jobs):
            return jobs
        assert time.monotonic() < deadline, [(job.id, job.status, job.error) for job in jobs]
        time.sleep(0.1)


def _ended(job: Job) -> bool:
    return job.status in TERMINAL


def test_compatible_jobs_run_as_one_batch_and_succeed_with_their_images(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, digits_model, start_worker
) -> None:
    ids = _enqueue(sessions, developer, digits_model, 3, num_images=2)
    start_worker()
    jobs = _wait(sessions, ids, _ended)
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


def test_the_same_seed_gives_the_same_image_alone_or_in_a_batch(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, digits_model, start_worker, tmp_path
) -> None:
    alone = _enqueue(sessions, developer, digits_model, seed=42)
    start_worker()
    _wait(sessions, alone, _ended)
    batched = _enqueue(sessions, developer, digits_model, seed=42)
    _enqueue(sessions, developer, digits_model, seed=7, num_images=3)
    _wait(sessions, batched, _ended)

    def pixels(job_id: str) -> np.ndarray:
        with sessions() as session:
            key = session.get(Job, job_id).output["images"][0]["key"]
        path = serving_settings.artifacts_dir / key
        return np.asarray(Image.open(path))

    first, second = pixels(alone[0]), pixels(batched[0])
    # ONNX Runtime may pick other kernels for other batch sizes: at most one grey level apart.
    assert np.abs(first.astype(int) - second.astype(int)).max() <= 1
    assert (first != second).mean() < 0.05


def test_a_running_job_stops_within_seconds_of_its_cancel(  # type: ignore[no-untyped-def]
    job_effects, sessions, developer, digits_model, start_worker
) -> None:
    (job_id,) = _enqueue(sessions, developer, digits_model, num_inference_steps=200)
    start_worker(step_seconds=0.05)
    _wait(sessions, [job_id], lambda job: (job.progress or {}).get("step", 0) >= 2)
    with session_scope(sessions) as session:
        transitions.request_cancel(session, job_id, job_effects)
    asked = time.monotonic()
    (job,) = _wait(sessions, [job_id], _ended, timeout=10)
    assert job.status == JobStatus.canceled and time.monotonic() - asked < 10
    assert job.progress["step"] < 200 and job.output is None and job.cost_micros is None
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(UsageEvent)) == 0


def test_a_job_over_its_timeout_fails_with_a_timeout_error(  # type: ignore[no-untyped-def]
    sessions, developer, digits_model, start_worker
) -> None:
    (job_id,) = _enqueue(sessions, developer, digits_model, num_inference_steps=200, timeout=0.5)
    start_worker(step_seconds=0.05)
    (job,) = _wait(sessions, [job_id], _ended, timeout=30)
    assert job.status == JobStatus.failed and "timed out after" in job.error
    assert job.attempt == 1  # a timeout is final, not retried


def test_the_pytorch_engine_serves_the_same_version(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, digits_model, start_worker
) -> None:
    ids = _enqueue(sessions, developer, digits_model, seed=5)
    start_worker(diffusion_engine="torch")
    (job,) = _wait(sessions, ids, _ended)
    assert job.status == JobStatus.succeeded, job.error
    assert "(torch)" in job.device


def test_a_model_missing_from_the_registry_fails_after_its_attempts(  # type: ignore[no-untyped-def]
    sessions, developer, make_model, start_worker
) -> None:
    ids = _enqueue(sessions, developer, make_model("never-registered", "3"))
    start_worker()
    (job,) = _wait(sessions, ids, _ended)
    assert job.status == JobStatus.failed and "failed on the worker" in job.error
    assert len(job.attempt_errors) == job.max_attempts
    # The registry's own words stay with the attempts, for operators.
    assert all("never-registered" in entry["error"] for entry in job.attempt_errors)


def _worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "GOSHEN_HOME": str(settings.home_dir),
        "GOSHEN_DATABASE_URL": settings.resolved_database_url,
        "GOSHEN_SECRET_KEY": settings.secret_key or "",
        "GOSHEN_MLFLOW_TRACKING_URI": settings.resolved_mlflow_tracking_uri,
        "GOSHEN_JOB_LEASE_SECONDS": str(settings.job_lease_seconds),
        "GOSHEN_QUEUE_RECOVERY_SECONDS": str(settings.queue_recovery_seconds),
        "GOSHEN_QUEUE_POLL_SECONDS": str(settings.queue_poll_seconds),
        "GOSHEN_JOB_RETRY_BASE_SECONDS": "0.1",
        "GOSHEN_WORKER_HEARTBEAT_SECONDS": "0.2",
        **extra,
    }


def _spawn(settings: Settings, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "goshen_launcher.cli", "worker"], env=_worker_env(settings, **extra)
    )


def test_worker_heartbeats_and_stops_on_sigterm(serving_settings, sessions) -> None:  # type: ignore[no-untyped-def]
    worker = _spawn(serving_settings)
    try:
        deadline = time.monotonic() + 60
        while not (rows := _workers(sessions)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(rows) == 1, "the worker never registered"
        registered = rows[0]
        assert registered.pid == worker.pid and registered.device_name.startswith("cpu")
        assert registered.device_memory_bytes > 0
        time.sleep(1)
        assert _workers(sessions)[0].heartbeat_at > registered.heartbeat_at
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    assert _workers(sessions)[0].status == WorkerStatus.stopped


def test_on_sigterm_a_worker_releases_a_job_it_cannot_finish_in_its_drain_time(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, digits_model
) -> None:
    (job_id,) = _enqueue(sessions, developer, digits_model, num_images=16, num_inference_steps=200)
    worker = _spawn(serving_settings, GOSHEN_WORKER_DRAIN_SECONDS="0")
    try:
        _wait(sessions, [job_id], lambda job: (job.progress or {}).get("step", 0) >= 1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    with sessions() as session:
        job = session.get(Job, job_id)
        running = session.scalar(
            select(func.count()).select_from(Job).where(Job.status == JobStatus.running)
        )
    assert (job.status, job.attempt, job.lease_owner, running) == (JobStatus.queued, 0, None, 0)
    assert "released" in job.logs
    (row,) = _workers(sessions)
    assert row.status == WorkerStatus.stopped and row.loaded_models == []


def test_on_sigterm_a_worker_finishes_its_batch_within_its_drain_time(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, digits_model
) -> None:
    ids = _enqueue(sessions, developer, digits_model, 2, num_inference_steps=50)
    worker = _spawn(serving_settings, GOSHEN_WORKER_DRAIN_SECONDS="15")
    try:
        _wait(sessions, ids[:1], lambda job: job.status != JobStatus.queued)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    with sessions() as session:
        statuses = [session.get(Job, job_id).status for job_id in ids]
    assert statuses == [JobStatus.succeeded] * 2  # one batch, finished, then the worker left
    assert _workers(sessions)[0].status == WorkerStatus.stopped


@pytest.mark.slow
def test_three_workers_finish_200_jobs_while_one_is_killed_mid_job(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, digits_model
) -> None:
    ids = _enqueue(sessions, developer, digits_model, 200, num_inference_steps=20)
    workers = [_spawn(serving_settings, GOSHEN_WORKER_MAX_BATCH_SIZE="4") for _ in range(3)]
    try:
        victim = workers[0]

        def victim_holds_a_job(_: Job) -> bool:
            with sessions() as session:
                return bool(
                    session.scalar(
                        select(func.count())
                        .select_from(Job)
                        .where(
                            Job.status == JobStatus.running,
                            Job.lease_owner.contains(f"-{victim.pid}-"),
                        )
                    )
                )

        _wait(sessions, ids[:1], victim_holds_a_job)
        victim.send_signal(signal.SIGKILL)
        killed_at = utcnow()
        victim.wait(timeout=10)
        jobs = _wait(sessions, ids, _ended, timeout=240)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(timeout=10)
    assert {job.status for job in jobs} == {JobStatus.succeeded}
    taken_over = [job for job in jobs if job.attempt >= 2]
    assert taken_over, "no job was taken from the killed worker"
    # Back in the queue within the lease TTL plus the recovery interval (and a little slack).
    bound = serving_settings.job_lease_seconds + serving_settings.queue_recovery_seconds + 2
    for job in taken_over:
        recovered_at = datetime.fromisoformat(job.attempt_errors[0]["at"])
        assert (recovered_at - killed_at).total_seconds() <= bound
        assert "stopped renewing its lease" in job.attempt_errors[0]["error"]
    with sessions() as session:
        usage = session.execute(select(UsageEvent.job_id, func.count()).group_by(UsageEvent.job_id))
        counts = dict(usage.all())
    assert counts == {job_id: 1 for job_id in ids}
    for job in jobs:
        assert len(job.output["images"]) == 1
        folder = serving_settings.artifacts_dir / "outputs" / developer.user_id / job.id
        files = [path.relative_to(folder).as_posix() for path in folder.rglob("*.png")]
        assert files == [f"{job.attempt}/0.png"]  # what earlier attempts wrote is gone


def test_generated_pngs_download_only_with_a_valid_signature(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, digits_model, start_worker
) -> None:
    ids = _enqueue(sessions, developer, digits_model)
    start_worker()
    _wait(sessions, ids, _ended)
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


def test_a_stable_diffusion_pipeline_from_the_registry_serves_text_to_image_jobs(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, tiny_sd_pipeline, mlflow_server, start_worker
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
    jobs = _wait(sessions, ids, _ended, timeout=120)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 2, [j.error for j in jobs]
    assert all("in a batch of 2 jobs" in job.logs for job in jobs)
    path = serving_settings.artifacts_dir / jobs[0].output["images"][0]["key"]
    image = Image.open(path)
    assert (image.size, image.mode) == ((72, 64), "RGB")
    with sessions() as session:
        usage = session.scalars(select(UsageEvent).where(UsageEvent.job_id == ids[0])).one()
    assert usage.unit == "second" and usage.quantity == pytest.approx(usage.seconds)


def test_a_job_canceled_inside_a_batch_ends_at_once_and_the_batch_goes_on(  # type: ignore[no-untyped-def]
    job_effects, sessions, developer, digits_model, start_worker
) -> None:
    kept, canceled = _enqueue(sessions, developer, digits_model, 2, num_inference_steps=60)
    start_worker(step_seconds=0.05)
    _wait(sessions, [kept], lambda job: (job.progress or {}).get("step", 0) >= 2)
    with session_scope(sessions) as session:
        transitions.request_cancel(session, canceled, job_effects)
    (ended,) = _wait(sessions, [canceled], _ended, timeout=5)
    with sessions() as session:
        still = session.get(Job, kept)
    assert ended.status == JobStatus.canceled
    assert still.status == JobStatus.running and still.progress["step"] < 60
    (finished,) = _wait(sessions, [kept], _ended)
    assert finished.status == JobStatus.succeeded and "in a batch of 2 jobs" in finished.logs


class _FailsInBatches:
    """The registry's models, but a batch of more than one job raises (a GPU out of memory)."""

    def __init__(self, source) -> None:  # type: ignore[no-untyped-def]
        self.source = source

    def resolve(self, model):  # type: ignore[no-untyped-def]
        return self.source.resolve(model)

    def load(self, model, version):  # type: ignore[no-untyped-def]
        generator = self.source.load(model, version)

        class Fragile:
            device = generator.device

            def generate(self, inputs, on_step):  # type: ignore[no-untyped-def]
                if len(inputs) > 1:
                    raise RuntimeError("CUDA out of memory")
                return generator.generate(inputs, on_step)

            def close(self) -> None:
                generator.close()

        return Fragile()


def test_a_failed_batch_runs_its_jobs_one_by_one_without_spending_attempts(  # type: ignore[no-untyped-def]
    serving_settings, sessions, developer, digits_model
) -> None:
    import threading

    from serving.worker.generator_cache import RegistrySource
    from serving.worker.loop import run_worker

    ids = _enqueue(sessions, developer, digits_model, 3)
    stop = threading.Event()
    source = _FailsInBatches(RegistrySource(serving_settings))
    worker = threading.Thread(target=run_worker, args=(serving_settings, stop, source))
    worker.start()
    try:
        jobs = _wait(sessions, ids, _ended)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 3
    assert {job.attempt for job in jobs} == {1}  # the failed batch did not count
    assert all("each job runs alone next" in job.logs for job in jobs)


def test_a_worker_outlives_a_database_that_fails_for_a_while(  # type: ignore[no-untyped-def]
    sessions, developer, digits_model, start_worker, monkeypatch
) -> None:
    from serving.worker import loop as worker

    real_claim, failures = worker.claim, iter(range(3))

    def flaky(context):  # type: ignore[no-untyped-def]
        if next(failures, None) is not None:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real_claim(context)

    monkeypatch.setattr(worker, "claim", flaky)
    ids = _enqueue(sessions, developer, digits_model)
    start_worker()
    (job,) = _wait(sessions, ids, _ended)
    assert job.status == JobStatus.succeeded
