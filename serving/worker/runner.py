"""Running one claimed batch on a worker: generate, store the images, end every job.

While the batch runs, a BatchReporter (serving.worker.reporter) writes its progress and logs and
ends the jobs that stop early. When the batch is done, one transaction writes what is left to
report and ends every job: succeeded, canceled, timed out, retried, or, when its lease was taken
over by another worker, left alone. What each end causes (events, usage, webhooks) is written by
the transitions themselves (serving.jobs.effects).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from goshen import catalog
from goshen.billing import ledger
from goshen.db import session_scope
from goshen.db.models import Model, utcnow
from goshen.runtimes.base import ImageGenerator, ModelFormatError
from goshen.runtimes.devices import PeakMemory
from goshen.runtimes.inputs import input_model_for
from goshen.storage import ArtifactStore, artifact_key
from serving.jobs import lease, transitions
from serving.jobs.claim import Claim
from serving.jobs.completion import Finished, complete_batch
from serving.jobs.effects import Completion, holding_credit
from serving.jobs.events import Entry
from serving.worker.context import WorkerContext, WorkerStopping
from serving.worker.outages import Outage, registry_outage, store_outage
from serving.worker.reporter import STOPPED, BatchReporter, end_early, fail_attempt, wait_out

log = logging.getLogger(__name__)


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
    run_batches(context, [claims])


def run_batches(
    context: WorkerContext, batches: Sequence[Sequence[Claim]]
) -> list[Sequence[Claim]]:
    """Run claimed batches of one model back to back, then end their jobs in one transaction;
    the batches that ran. A batch that fails ends on its own (_batch_failed).

    While a batch runs, its reporter renews the leases of the claim's other jobs too (those
    that ran and wait for the end, and those not started). The batches not started go back to
    the queue, unstarted and uncounted, once GOSHEN_JOB_LEASE_SECONDS / 3 have passed since the
    first one started (a model slower than its last batch said: other workers may run them) or
    once the worker is told to stop; the batches that ran are ended first. On any error the
    same is tried before it is raised: what ran is not run again."""
    limit = context.settings.job_lease_seconds / 3
    started = time.monotonic()
    ran: list[_Ran] = []
    done: list[Sequence[Claim]] = []
    for number, claims in enumerate(batches):
        if number and (context.stop.is_set() or time.monotonic() - started > limit):
            _end_ran(context, ran)
            late = "claimed with earlier batches that ran longer than expected"
            _release_unstarted(
                context, batches[number:], STOPPED if context.stop.is_set() else late
            )
            return done
        waiting = [c for batch in ran for c in batch.finished.claims] + [
            c for batch in batches[number + 1 :] for c in batch
        ]
        try:
            outcome = _run(context, claims, waiting)
        except BaseException as exc:
            _end_before_raising(context, ran, batches[number + 1 :], exc)
            raise
        done.append(claims)
        if outcome is not None:
            ran.append(outcome)
    _end_ran(context, ran)
    return done


def _end_before_raising(
    context: WorkerContext,
    ran: Sequence[_Ran],
    unstarted: Sequence[Sequence[Claim]],
    exc: BaseException,
) -> None:
    """The batch being run raised `exc`: end the batches that ran and give back those not
    started, as far as the database lets (what it refuses waits for recovery, as before)."""
    reason = STOPPED if isinstance(exc, WorkerStopping) else "its worker could not go on"
    try:
        _end_ran(context, ran)
    except Exception:
        log.exception("could not end the batches that ran; recovery will take their jobs")
    try:
        _release_unstarted(context, unstarted, reason)
    except Exception:
        log.exception("could not give back the batches not started; recovery will take them")


@dataclass(frozen=True)
class _Ran:
    """A batch that ran to its end, waiting for the transaction that ends its jobs."""

    finished: _Finished
    reporter: BatchReporter
    outputs: list[dict[str, Any] | Exception | Outage | None]
    entries: list[Entry]


def _run(
    context: WorkerContext, claims: Sequence[Claim], waiting: Sequence[Claim] = ()
) -> _Ran | None:
    """Generate and store one batch (renewing the leases of `waiting` meanwhile); None when it
    failed (its jobs ended here)."""
    model = context.catalog_entry(claims[0].model_id)
    started = time.monotonic()
    failure: BaseException | None = None
    with BatchReporter(context, claims, waiting) as reporter:
        try:
            generator = _generator(context, model, claims)
            parse = input_model_for(model.runtime, model.classes).model_validate
            inputs = [parse(claim.input) for claim in claims]
            reporter.log(_start_line(generator, claims))
            with PeakMemory(generator.device) as memory:
                results = generator.generate(inputs, reporter.on_step)
        except Exception as exc:  # noqa: BLE001 - every job of the batch ends with it below
            failure = exc
        else:
            seconds = time.monotonic() - started
            # While the reporter runs: the leases stay renewed however long the store takes to
            # answer, so recovery never takes these jobs from a worker that is storing them.
            outputs = _store_outputs(context, claims, results, reporter)
    if isinstance(failure, WorkerStopping):
        _end_rest(
            context,
            reporter,
            lambda session, claim: transitions.release(session, claim, STOPPED, context.effects),
        )
        raise failure
    if failure is not None:
        context.batch_seconds.pop(model.id, None)  # no prefetch on a model that fails
        _batch_failed(context, reporter, failure)
        return None
    if sum(claim.images for claim in claims) >= context.settings.worker_max_batch_size:
        # Full batches only: prefetch brings full batches, and a smaller one may take less.
        context.batch_seconds[model.id] = time.monotonic() - started
    finished = _Finished(model, generator.device.name, memory.bytes, seconds, claims)
    return _Ran(finished, reporter, outputs, reporter.take())


def _end_ran(context: WorkerContext, ran: Sequence[_Ran]) -> None:
    """End the jobs of batches that ran, in one transaction: the successes together
    (complete_batch), the others one by one."""
    if not ran:
        return
    ending = [
        (batch, _ending(batch, index)) for batch in ran for index in batch.reporter.unfinished()
    ]
    with session_scope(context.factory) as session:
        holding = holding_credit(session, [claim.job_id for _, (claim, _, _) in ending])
        # Balances first, as every transaction that ends jobs takes them; but only of the
        # users whose jobs' ends settle credit: a success without a hold settles none (and
        # never will have one), so a burst of one user's jobs does not queue on its balance.
        settling = [end for _, end in ending if end[0].job_id in holding or not _succeeds(*end)]
        ledger.lock_balances(session, (claim.user_id for claim, _, _ in settling))
        succeeded = []
        for batch, (claim, output, stopped) in ending:
            if stopped is None and isinstance(output, dict):
                succeeded.append(_succeeded(batch.finished, claim, output, batch.entries))
            else:
                _finish(context, session, batch.finished, claim, output, stopped, batch.entries)
        completed = complete_batch(session, succeeded, context.effects, holding=holding)
    for lost in {item.claim.job_id for item in succeeded} - {job.id for job in completed}:
        log.warning("job %s: lease lost before completion; another worker owns it", lost)
    for batch in ran:
        _drop_other_attempts(context.store, batch.finished.claims, batch.outputs)


def _ending(batch: _Ran, index: int) -> tuple[Claim, Any, str | None]:
    """A job of a batch that ran: its claim, its stored output (or why there is none) and why
    it stopped early, if it did."""
    return batch.finished.claims[index], batch.outputs[index], batch.reporter.stopped.get(index)


def _succeeds(claim: Claim, output: Any, stopped: str | None) -> bool:
    return stopped is None and isinstance(output, dict)


def _release_unstarted(
    context: WorkerContext, batches: Sequence[Sequence[Claim]], reason: str
) -> None:
    """Give the jobs of batches that never started back to the queue (their attempts uncounted)."""
    claims = [claim for batch in batches for claim in batch]
    if not claims:
        return
    with session_scope(context.factory) as session:
        ledger.lock_balances(session, (claim.user_id for claim in claims))
        for claim in claims:
            transitions.release(session, claim, reason, context.effects)


def _batch_failed(context: WorkerContext, reporter: BatchReporter, failure: BaseException) -> None:
    """A batch that raised: when the registry is down its jobs wait out the outage in the queue;
    else a batch of several jobs goes back to run its jobs one by one (one of them may be the
    cause, say a GPU out of memory), uncounted; a single job fails its attempt."""
    outage = registry_outage(failure, context.settings)
    if outage is not None:
        context.health.down(outage)
        jobs = len(reporter.unfinished())
        log.warning("%s; the batch's %d jobs go back to the queue", outage.detail, jobs)
        _end_rest(context, reporter, lambda s, c: wait_out(context, s, c, outage))
        return
    log.error("batch of %d jobs failed", len(reporter.claims), exc_info=failure)
    detail = _describe(failure)
    if isinstance(failure, ModelFormatError):
        error, retryable = "this model version cannot be served (see the worker log)", False
    else:
        error, retryable = f"the model failed on the worker ({type(failure).__name__})", True
    if retryable and len(reporter.unfinished()) > 1:
        reason = f"its batch failed ({type(failure).__name__}); each job runs alone next"
        _end_rest(
            context,
            reporter,
            lambda s, c: transitions.release(s, c, reason, context.effects, alone=True),
        )
        return
    _end_rest(
        context,
        reporter,
        lambda session, claim: fail_attempt(
            context, session, claim, error, retryable=retryable, detail=detail
        ),
    )


def _generator(context: WorkerContext, model: Model, claims: Sequence[Claim]) -> ImageGenerator:
    version = claims[0].model_version or context.generators.source.resolve(model)
    return context.generators.get(model, version)


def _start_line(generator: ImageGenerator, claims: Sequence[Claim]) -> str:
    images = sum(claim.images for claim in claims)
    return (
        f"generating on {generator.device.name}: {images} images in a batch of {len(claims)} jobs"
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _end_rest(
    context: WorkerContext, reporter: BatchReporter, end: Callable[[Session, Claim], object]
) -> None:
    """Report what is left, then `end(session, claim)` every job not ended yet."""
    entries = reporter.take()
    with session_scope(context.factory) as session:
        ledger.lock_balances(session, (reporter.claims[i].user_id for i in reporter.unfinished()))
        for index in reporter.unfinished():
            lease.report(session, reporter.claims[index], entries)
            end(session, reporter.claims[index])


def _store_outputs(
    context: WorkerContext,
    claims: Sequence[Claim],
    results: Sequence[list[Image.Image] | None],
    reporter: BatchReporter,
) -> list[dict[str, Any] | Exception | Outage | None]:
    """Each finished job's images in the store (before its row says so), or why that failed:
    once the store is found down, the batch's other jobs do not try it."""
    outputs: list[dict[str, Any] | Exception | Outage | None] = []
    outage: Outage | None = None
    for index, (claim, images) in enumerate(zip(claims, results, strict=True)):
        if images is None or index in reporter.stopped:
            outputs.append(None)
            continue
        if outage is not None:
            outputs.append(outage)
            continue
        try:
            outputs.append(_store_images(context.store, claim, images))
        except Exception as exc:
            # One job failing to store must not take its batch with it.
            log.exception("job %s: could not store its images", claim.job_id)
            outage = store_outage(context.store, exc)
            if outage is not None:
                context.health.down(outage)
            outputs.append(outage or exc)
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
    output: dict[str, Any] | Exception | Outage | None,
    stopped: str | None,
    entries: list[Entry],
) -> None:
    """End one job of a finished batch that did not succeed, in the batch's final transaction,
    with the batch's last report `entries`."""
    if stopped == "lost":
        log.warning("job %s: its lease was taken over; its result is dropped", claim.job_id)
        return
    lease.report(session, claim, entries)
    if stopped is not None:
        end_early(context, session, claim, stopped)
    elif isinstance(output, Outage):
        wait_out(context, session, claim, output)
    elif isinstance(output, Exception):
        error = f"storing its images failed ({type(output).__name__})"
        fail_attempt(context, session, claim, error, retryable=True, detail=_describe(output))
    else:
        error = f"{finished.model.name} returned no images"
        fail_attempt(context, session, claim, error, retryable=True)


def _succeeded(
    finished: _Finished, claim: Claim, output: dict[str, Any], entries: list[Entry]
) -> Finished:
    """A job of the batch that succeeded, priced, for complete_batch."""
    images = len(output["images"])
    compute = finished.share(claim)
    quantity, cost = catalog.price(finished.model, images=images, seconds=compute)
    done = Completion(
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
    return Finished(claim, done, [*entries, ("log", line)])
