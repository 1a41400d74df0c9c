"""Running one claimed batch: generate, report every step, store the images, finish each job.

A reporter thread beside the sampling loop writes each step's progress and the log lines, renews
the leases and reads back cancellations, so the loop never waits on the database. When the batch
is done, one transaction writes what is left to report and ends every job: succeeded (output,
usage event and webhook events together), canceled, timed out, retried, or, when its lease was
taken over by another worker, left alone.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, Model, utcnow
from goshen.runtimes.devices import PeakMemory
from goshen.runtimes.generators import ImageGenerator, ModelFormatError
from goshen.runtimes.inputs import input_model
from goshen.storage import ArtifactStore, artifact_key
from serving import queue, webhooks
from serving.job_views import webhook_payload
from serving.model_cache import ModelCache
from serving.queue import Claim

log = logging.getLogger(__name__)
FLUSH_SECONDS = 0.1
# Pricing and runtime changes reach running workers within this many seconds.
CATALOG_TTL_SECONDS = 5.0


class WorkerStopping(Exception):
    """The worker was told to stop and its drain period is over: release the batch."""


@dataclass
class WorkerContext:
    """What a worker's batches share."""

    settings: Settings
    factory: sessionmaker[Session]
    store: ArtifactStore
    worker_id: str
    cache: ModelCache
    stop: threading.Event = field(default_factory=threading.Event)
    hurry: threading.Event = field(default_factory=threading.Event)  # a second stop signal
    stop_requested_at: float | None = None
    _entries: dict[str, tuple[float, Model]] = field(default_factory=dict)

    def catalog_entry(self, model_id: str) -> Model:
        """The model's catalog row, read again once it is CATALOG_TTL_SECONDS old."""
        cached = self._entries.get(model_id)
        if cached is not None and time.monotonic() - cached[0] < CATALOG_TTL_SECONDS:
            return cached[1]
        with self.factory() as session:
            model = session.get(Model, model_id)
            assert model is not None, "catalog entries with jobs are never deleted (RESTRICT)"
            session.expunge(model)
        self._entries[model_id] = (time.monotonic(), model)
        return model

    def draining_over(self) -> bool:
        """Told to stop longer ago than GOSHEN_WORKER_DRAIN_SECONDS, or told twice."""
        if self.hurry.is_set():
            return True
        if not self.stop.is_set():
            return False
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        return time.monotonic() - self.stop_requested_at >= self.settings.worker_drain_seconds


class BatchReporter:
    """Beside a running batch: progress per step, log lines, lease renewals, and the jobs that
    stop early (canceled, timed out, or released when the worker's drain period ends), which it
    ends at once, even while the batch is inside a long step."""

    def __init__(self, context: WorkerContext, claims: Sequence[Claim], model: Model) -> None:
        self.context = context
        self.claims = list(claims)
        self.model = model
        timeout = context.settings.job_timeout_seconds
        started = time.monotonic()
        self.deadlines = [started + (claim.timeout_seconds or timeout) for claim in claims]
        # index -> "canceled" | "timeout" | "released" | "lost" (another worker holds it now)
        self.stopped: dict[int, str] = {}
        self.ended: set[int] = set()  # jobs already ended here (or lost): nothing more to write
        self._entries: list[queue.Entry] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._last_heartbeat = started
        self._thread = threading.Thread(target=self._run, name="batch-reporter", daemon=True)

    def __enter__(self) -> BatchReporter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def log(self, line: str) -> None:
        """A log line for every job of the batch."""
        with self._lock:
            self._entries.append(("log", line))

    def on_step(self, step: int, total: int) -> AbstractSet[int]:
        """The generator's step callback: queue the step's progress, answer whom to stop."""
        if self.context.draining_over():
            raise WorkerStopping("the worker's drain period ended")
        with self._lock:
            self._entries.append(("progress", (step, total)))
        self._check_deadlines()
        with self._lock:
            return frozenset(self.stopped)

    def take(self) -> list[queue.Entry]:
        """What is waiting to be reported, now the caller's to write."""
        with self._lock:
            entries, self._entries = self._entries, []
        return entries

    def unfinished(self) -> list[int]:
        """Jobs of the batch not yet ended here."""
        with self._lock:
            return [index for index in range(len(self.claims)) if index not in self.ended]

    def _active(self) -> list[int]:
        with self._lock:
            return [index for index in range(len(self.claims)) if index not in self.stopped]

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            for index, deadline in enumerate(self.deadlines):
                if now > deadline:
                    self.stopped.setdefault(index, "timeout")

    def _run(self) -> None:
        while not self._done.wait(FLUSH_SECONDS):
            try:
                self._tick()
            except Exception:
                # A database hiccup must not kill the batch; the lease has slack for retries.
                log.exception("batch reporter could not write; retrying")

    def _tick(self) -> None:
        self._check_deadlines()
        if self.context.draining_over():
            with self._lock:
                for index in range(len(self.claims)):
                    self.stopped.setdefault(index, "released")
        entries = self.take()
        with session_scope(self.context.factory) as session:
            for index in self._active():
                self._note(index, queue.report(session, self.claims[index], entries))
            for index, reason in self._to_end():
                queue.report(session, self.claims[index], entries)
                end_early(self.context, session, self.claims[index], self.model, reason)
                with self._lock:
                    self.ended.add(index)
        if time.monotonic() - self._last_heartbeat >= self.context.settings.job_lease_seconds / 3:
            self._heartbeat()

    def _to_end(self) -> list[tuple[int, str]]:
        with self._lock:
            return [
                (index, reason)
                for index, reason in self.stopped.items()
                if index not in self.ended and reason != "lost"
            ]

    def _heartbeat(self) -> None:
        lease = self.context.settings.job_lease_seconds
        with session_scope(self.context.factory) as session:
            for index in self.unfinished():
                self._note(index, queue.heartbeat(session, self.claims[index], lease))
        self._last_heartbeat = time.monotonic()

    def _note(self, index: int, state: queue.LeaseState) -> None:
        with self._lock:
            if not state.held:
                self.stopped[index] = "lost"
                self.ended.add(index)
            elif state.cancel_requested:
                self.stopped.setdefault(index, "canceled")


def end_early(
    context: WorkerContext, session: Session, claim: Claim, model: Model, reason: str
) -> None:
    """End a job that stopped before its batch finished: canceled, timed out or released."""
    if reason == "canceled":
        send_webhook(context, session, queue.confirm_canceled(session, claim), model, "completed")
    elif reason == "timeout":
        limit = claim.timeout_seconds or context.settings.job_timeout_seconds
        error = f"timed out after {limit:.0f} s (GOSHEN_JOB_TIMEOUT_SECONDS)"
        _fail(context, session, claim, error, retryable=False)
    else:
        queue.release(session, claim, _STOPPED)


@dataclass(frozen=True)
class _Finished:
    """What every job of a finished batch shares."""

    model: Model
    device: str
    peak_memory_bytes: int | None
    seconds: float
    claims: Sequence[Claim]

    def share(self, claim: Claim) -> float:
        """This job's part of the batch's compute time, by images."""
        total = sum(c.images for c in self.claims)
        return self.seconds * claim.images / total if total else self.seconds / len(self.claims)


def run_batch(context: WorkerContext, claims: Sequence[Claim]) -> None:
    """Run every job of a claimed batch to its end; raises WorkerStopping after releasing."""
    model = context.catalog_entry(claims[0].model_id)
    started = time.monotonic()
    failure: BaseException | None = None
    with BatchReporter(context, claims, model) as reporter:
        try:
            generator = _generator(context, model, claims)
            inputs = [input_model(model.runtime).model_validate(c.input) for c in claims]
            reporter.log(_start_line(generator, claims))
            with PeakMemory(generator.device) as memory:
                results = generator.generate(inputs, reporter.on_step)
        except Exception as exc:  # noqa: BLE001 - every job of the batch ends with it below
            failure = exc
    if isinstance(failure, WorkerStopping):
        _end_rest(context, reporter, lambda session, claim: queue.release(session, claim, _STOPPED))
        raise failure
    if failure is not None:
        _batch_failed(context, reporter, failure)
        return
    finished = _Finished(
        model, generator.device.name, memory.bytes, time.monotonic() - started, claims
    )
    outputs = _store_outputs(context.store, claims, results, reporter)
    entries = reporter.take()
    with session_scope(context.factory) as session:
        for index in reporter.unfinished():
            stopped = reporter.stopped.get(index)
            _finish(context, session, finished, claims[index], outputs[index], stopped, entries)
    _drop_other_attempts(context.store, claims, outputs)


_STOPPED = "the worker stopped before the batch finished"


def _batch_failed(context: WorkerContext, reporter: BatchReporter, failure: BaseException) -> None:
    """A batch that raised: a batch of several jobs goes back to run its jobs one by one (one of
    them may be the cause, say a GPU out of memory), uncounted; a single job fails its attempt."""
    log.error("batch of %d jobs failed", len(reporter.claims), exc_info=failure)
    detail = _describe(failure)
    if isinstance(failure, ModelFormatError):
        error, retryable = "this model version cannot be served (see the worker log)", False
    else:
        error, retryable = f"the model failed on the worker ({type(failure).__name__})", True
    if retryable and len(reporter.unfinished()) > 1:
        reason = f"its batch failed ({type(failure).__name__}); each job runs alone next"
        _end_rest(context, reporter, lambda s, c: queue.release(s, c, reason, alone=True))
        return
    _end_rest(
        context,
        reporter,
        lambda session, claim: _fail(context, session, claim, error, retryable, detail=detail),
    )


def _generator(context: WorkerContext, model: Model, claims: Sequence[Claim]) -> ImageGenerator:
    version = claims[0].model_version or context.cache.source.resolve(model)
    return context.cache.get(model, version)


def _start_line(generator: ImageGenerator, claims: Sequence[Claim]) -> str:
    images = sum(claim.images for claim in claims)
    return (
        f"generating on {generator.device.name}: {images} images in a batch of {len(claims)} jobs"
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _end_rest(context: WorkerContext, reporter: BatchReporter, end) -> None:  # type: ignore[no-untyped-def]
    """Report what is left, then `end(session, claim)` every job not ended yet."""
    entries = reporter.take()
    with session_scope(context.factory) as session:
        for index in reporter.unfinished():
            queue.report(session, reporter.claims[index], entries)
            end(session, reporter.claims[index])


def _store_outputs(
    store: ArtifactStore,
    claims: Sequence[Claim],
    results: Sequence[list[Image.Image] | None],
    reporter: BatchReporter,
) -> list[dict[str, Any] | Exception | None]:
    """Each finished job's images in the store (before its row says so), or why that failed."""
    outputs: list[dict[str, Any] | Exception | None] = []
    for index, (claim, images) in enumerate(zip(claims, results, strict=True)):
        if images is None or index in reporter.stopped:
            outputs.append(None)
            continue
        try:
            outputs.append(_store_images(store, claim, images))
        except Exception as exc:
            # One job failing to store (storage down, say) must not take its batch with it.
            log.exception("job %s: could not store its images", claim.job_id)
            outputs.append(exc)
    return outputs


def _store_images(store: ArtifactStore, claim: Claim, images: list[Image.Image]) -> dict[str, Any]:
    """PNGs under outputs/{user}/{job}/{attempt}/: an attempt whose lease was taken over never
    overwrites the images of the attempt that finished."""
    stored = []
    for number, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        key = artifact_key(
            "outputs", claim.user_id, claim.job_id, str(claim.attempt), f"{number}.png"
        )
        store.put(key, buffer.getvalue(), content_type="image/png")
        stored.append(
            {"key": key, "content_type": "image/png", "width": image.width, "height": image.height}
        )
    return {"images": stored}


def _drop_other_attempts(
    store: ArtifactStore, claims: Sequence[Claim], outputs: Sequence[Any]
) -> None:
    """Remove images earlier attempts of the finished jobs left (a worker killed mid-store)."""
    for claim, output in zip(claims, outputs, strict=True):
        if not isinstance(output, dict) or claim.attempt == 1:
            continue
        for earlier in range(1, claim.attempt):
            folder = artifact_key("outputs", claim.user_id, claim.job_id, str(earlier))
            try:
                store.delete_prefix(folder)
            except Exception:  # leftovers waste space; they break nothing
                log.warning("could not remove %s", folder, exc_info=True)


def _finish(
    context: WorkerContext,
    session: Session,
    finished: _Finished,
    claim: Claim,
    output: dict[str, Any] | Exception | None,
    stopped: str | None,
    entries: list[queue.Entry],
) -> None:
    """End one job of a finished batch, in the batch's final transaction, with the batch's
    last report `entries`."""
    if stopped == "lost":
        log.warning("job %s: its lease was taken over; its result is dropped", claim.job_id)
        return
    if stopped is None and isinstance(output, dict):
        _complete(context, session, finished, claim, output, entries)
        return
    queue.report(session, claim, entries)
    if stopped is not None:
        end_early(context, session, claim, finished.model, stopped)
    elif isinstance(output, Exception):
        error = f"storing its images failed ({type(output).__name__})"
        _fail(context, session, claim, error, True, detail=_describe(output))
    else:
        _fail(context, session, claim, f"{finished.model.name} returned no images", True)


def _complete(
    context: WorkerContext,
    session: Session,
    finished: _Finished,
    claim: Claim,
    output: dict[str, Any],
    entries: list[queue.Entry],
) -> None:
    images = len(output["images"])
    compute = finished.share(claim)
    quantity, cost = catalog.price(finished.model, images=images, seconds=compute)
    done = queue.Completion(
        output=output,
        run_seconds=(utcnow() - claim.started_at).total_seconds(),
        device=finished.device,
        peak_memory_bytes=finished.peak_memory_bytes,
        images=images,
        compute_seconds=compute,
        quantity=quantity,
        unit=str(finished.model.pricing_unit),
        cost_micros=cost,
    )
    line = f"generated {images} images in {compute:.2f} s"
    job = queue.complete(session, claim, done, [*entries, ("log", line)])
    if job is None:
        log.warning("job %s: lease lost before completion; another worker owns it", claim.job_id)
        return
    for event in ("output", "logs", "completed"):
        send_webhook(context, session, job, finished.model, event)


def _fail(
    context: WorkerContext,
    session: Session,
    claim: Claim,
    error: str,
    retryable: bool,
    detail: str | None = None,
) -> None:
    """End the attempt with `error`; a job that ends (no retry) sends its completed webhook."""
    job = queue.fail(
        session,
        claim,
        error,
        retryable=retryable,
        retry_base_seconds=context.settings.job_retry_base_seconds,
        detail=detail,
    )
    if job is not None and job.status in queue.TERMINAL:
        send_webhook(context, session, job, session.get(Model, claim.model_id), "completed")


def send_webhook(
    context: WorkerContext, session: Session, job: Job | None, model: Model | None, event: str
) -> None:
    """Queue the job's webhook event (in the caller's transaction) if it asked for one."""
    if job is None or model is None or job.webhook is None:
        return
    payload = webhook_payload(job, model.name, event, context.store, context.settings.api_url)
    webhooks.enqueue_event(session, job, event, payload)
