"""`goshen worker`: claims jobs from the shared queue and runs them on this host's GPU (or CPU).

Any number of workers on any number of hosts share one database. Each registers in the workers
table and heartbeats there (host, device, memory, loaded models, and `unhealthy` with the reason
while the registry or the store is down); claims batches of compatible jobs; returns stalled jobs
of dead workers to the queue; and wakes at once on PostgreSQL notifications, polling otherwise.
On SIGTERM it claims nothing new, lets the running batch finish within
GOSHEN_WORKER_DRAIN_SECONDS, releases it otherwise, and marks itself stopped.

Every call to a dependency gives up within about GOSHEN_DEPENDENCY_TIMEOUT_SECONDS (the registry,
the store, the database; serving.worker.outages says what an outage does to a job).
"""

from __future__ import annotations

import logging
import os
import resource
import secrets
import signal
import socket
import threading
import time

from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, logs, registry
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import Worker, WorkerStatus, utcnow
from goshen.db.notifications import JOBS_CHANNEL, Listener
from goshen.runtimes.devices import Device, detect_device
from goshen.storage import make_store
from serving.jobs import transitions
from serving.jobs.claim import (
    Claim,
    claim_affine,
    claim_compatible,
    split_batches,
)
from serving.worker.context import WorkerContext, WorkerStopping
from serving.worker.generator_cache import GeneratorCache, ModelSource, RegistrySource
from serving.worker.job_context import claimed, running
from serving.worker.metrics import WorkerMetrics
from serving.worker.runner import run_batches

log = logging.getLogger(__name__)
# Other workers silent for this many heartbeat intervals are dead to affinity, as they are
# `stale` in /v1/admin/workers.
LIVE_HEARTBEATS = 3
# The most batches one claim takes (GOSHEN_WORKER_PREFETCH_SECONDS).
MAX_PREFETCH_BATCHES = 16


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def device_label(device: Device) -> str:
    """Where the worker computes: "cpu", or "cuda:N" with N the GPU it is pinned to
    (CUDA_VISIBLE_DEVICES, as `goshen worker --gpus` sets it; in the process it is device 0)."""
    if device.kind != "cuda":
        return device.kind
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return f"cuda:{visible}" if visible and "," not in visible else "cuda:0"


def memory_in_use(device: Device) -> int | None:
    """What the worker holds now: CUDA's allocated memory on a GPU, else the process's RSS."""
    try:
        if device.kind == "cuda":
            import torch

            return int(torch.cuda.memory_allocated())
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # Not Linux: the peak (ru_maxrss, KiB on Linux, bytes on macOS) is the best there is.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def register_worker(factory: sessionmaker[Session], worker_id: str) -> Worker:
    device = detect_device()
    with session_scope(factory) as session:
        worker = Worker(
            id=worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            device_name=device.name,
            device_memory_bytes=device.memory_bytes,
            device=device_label(device),
            memory_used_bytes=memory_in_use(device),
            loaded_models=[],
            status=WorkerStatus.idle,
        )
        session.add(worker)
    return worker


def heartbeat(
    factory: sessionmaker[Session],
    worker_id: str,
    status: WorkerStatus,
    loaded_models: list[dict[str, str]] | None = None,
    detail: str | None = None,
    memory_used_bytes: int | None = None,
) -> None:
    """Write the worker's row: alive now, its status, why it is unhealthy (`detail`, None when
    it is not) and, when given, what it has loaded and the memory it uses."""
    values: dict[str, object] = {
        "heartbeat_at": utcnow(),
        "status": status,
        "status_detail": detail,
    }
    if loaded_models is not None:
        values["loaded_models"] = loaded_models
    if memory_used_bytes is not None:
        values["memory_used_bytes"] = memory_used_bytes
    with session_scope(factory) as session:
        session.execute(update(Worker).where(Worker.id == worker_id).values(**values))


class _WorkerHeartbeat(threading.Thread):
    """Reports the worker alive every GOSHEN_WORKER_HEARTBEAT_SECONDS, with what it is doing:
    `unhealthy`, naming the dependency, while one it found down does not answer its check (checked
    in the background, at most one pass at a time: serving.worker.outages)."""

    def __init__(self, context: WorkerContext, device: Device) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.context = context
        self.device = device
        self.busy = False
        self.finished = threading.Event()
        self._beat_lock = threading.Lock()  # a beat now (models changed) and the timed one

    def beat(self) -> None:
        """Report alive now, with the models loaded and the memory in use."""
        down = self.context.health.unhealthy_because()
        with self._beat_lock:
            heartbeat(
                self.context.factory,
                self.context.worker_id,
                self.status(unhealthy=down is not None),
                self.context.generators.loaded(),
                down,
                memory_in_use(self.device),
            )

    def models_changed(self) -> None:
        """A model was loaded (and maybe one unloaded): tell the other workers' claims now."""
        try:
            self.beat()
        except Exception:
            log.exception("could not report the loaded models; the next heartbeat will")

    def status(self, unhealthy: bool) -> WorkerStatus:
        if self.context.stop.is_set():
            return WorkerStatus.draining
        if unhealthy:
            return WorkerStatus.unhealthy
        return WorkerStatus.busy if self.busy else WorkerStatus.idle

    def run(self) -> None:
        logs.bind(worker_id=self.context.worker_id)  # this thread's lines, as the loop's
        settings = self.context.settings
        interval = min(settings.worker_heartbeat_seconds, settings.queue_recovery_seconds)
        next_beat = next_recovery = 0.0
        while not self.finished.wait(interval):
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + settings.worker_heartbeat_seconds
                    self.beat()
                # Here, not between batches: a worker busy with a long batch still returns
                # the jobs of dead workers within the lease TTL and the recovery interval.
                if now >= next_recovery:
                    next_recovery = now + settings.queue_recovery_seconds
                    recover(self.context)
            except Exception:
                log.exception("worker heartbeat or recovery failed; trying again")


def run_worker(
    settings: Settings, stop: threading.Event | None = None, source: ModelSource | None = None
) -> int:
    """Run jobs until told to stop; `source` replaces the MLflow registry (benchmarks, tests)."""
    hurry = threading.Event()
    stop = stop or _stop_on_signals(hurry)
    engine = make_engine(
        settings.resolved_database_url, timeout=settings.dependency_timeout_seconds
    )
    if source is None:
        # Here, not in RegistrySource: the bound holds for the whole process, and tests and
        # benchmarks build sources inside processes that make other MLflow calls.
        registry.bound_mlflow_client(settings.dependency_timeout_seconds)
        source = RegistrySource(settings)
    generators = GeneratorCache(source, settings.worker_model_cache_size)
    listener = Listener(settings.resolved_database_url, (JOBS_CHANNEL,))
    try:
        migrate.upgrade(engine)
        factory = make_sessionmaker(engine)
        worker = register_worker(factory, new_worker_id())
        context = WorkerContext(
            settings, factory, make_store(settings), worker.id, generators, stop, hurry
        )
        log.info("worker %s ready on %s (%s)", worker.id, worker.device, worker.device_name)
        beat = _WorkerHeartbeat(context, detect_device())
        metrics = WorkerMetrics(worker, beat.device, memory_in_use)
        generators.on_change = beat.models_changed
        beat.start()
        try:
            metrics.start(settings, factory)
            with logs.log_context(worker_id=worker.id):
                _work(context, listener, beat, metrics)
        finally:
            metrics.close()
            beat.finished.set()
            beat.join()
            try:
                heartbeat(factory, worker.id, WorkerStatus.stopped, [])
            except Exception:
                log.exception("could not mark worker %s stopped", worker.id)
        log.info("worker %s stopped", worker.id)
    finally:
        listener.close()
        generators.close()
        engine.dispose()
    return 0


def _work(
    context: WorkerContext,
    listener: Listener,
    beat: _WorkerHeartbeat,
    metrics: WorkerMetrics,
) -> None:
    settings = context.settings
    while not context.stop.is_set():
        claim_started = time.time_ns()
        try:
            batches = claim(context)
        except OperationalError as exc:
            # The database went away (a restart, a failover): wait, then try again.
            log.warning(
                "the database does not answer (%s); claiming again in %.1f s",
                type(exc.orig or exc).__name__,
                settings.queue_poll_seconds,
            )
            time.sleep(settings.queue_poll_seconds)
            continue
        except Exception:
            log.exception(
                "could not claim jobs; trying again in %.1f s", settings.queue_poll_seconds
            )
            time.sleep(settings.queue_poll_seconds)
            continue
        if not batches:
            listener.wait(settings.queue_poll_seconds)
            continue
        beat.busy = True
        claims = [claim for batch in batches for claim in batch]
        try:
            claimed(claims, context.worker_id, claim_started)
            entry = context.catalog_entry(claims[0].model_id)
            model = catalog.metric_label(entry.name, entry.owner_id)  # the metrics' label
            started = time.monotonic()
            with running(claims, context.worker_id):
                ran = run_batches(context, batches)
            seconds = (time.monotonic() - started) / max(1, len(ran))
            for batch in ran:
                metrics.batch_ran(model, batch, seconds)
        except WorkerStopping:
            return
        except OperationalError as exc:
            # The database went away mid-batch: the leases lapse and recovery requeues the
            # jobs; this worker carries on once it answers again.
            log.warning(
                "the database does not answer (%s); the batch's %d jobs will be recovered",
                type(exc.orig or exc).__name__,
                len(claims),
            )
            time.sleep(settings.queue_poll_seconds)
        except Exception:
            log.exception(
                "batch of %d jobs could not finish; its jobs will be recovered", len(claims)
            )
            time.sleep(settings.queue_poll_seconds)
        finally:
            beat.busy = False


def claim(context: WorkerContext) -> list[list[Claim]]:
    """Claim a batch, waiting up to GOSHEN_WORKER_BATCH_WAIT_SECONDS for compatible jobs; jobs
    for the models this worker has loaded first (serving.jobs.claim's model affinity). A full
    batch of a model that runs fast here brings the batches that follow it (prefetch)."""
    settings = context.settings
    with session_scope(context.factory) as session:
        claims = claim_affine(
            session,
            context.worker_id,
            context.effects,
            own=context.generators.model_ids(),
            affinity_seconds=settings.worker_affinity_seconds,
            stale_after_seconds=LIVE_HEARTBEATS * settings.worker_heartbeat_seconds,
            max_images=settings.worker_max_batch_size,
            lease_seconds=settings.job_lease_seconds,
        )
    room = settings.worker_max_batch_size - sum(c.images for c in claims)
    if claims and room > 0 and settings.worker_batch_wait_seconds > 0:
        if context.stop.wait(settings.worker_batch_wait_seconds):
            return [claims]  # stopping: run what is claimed, take no more
        claims += _claim_more(context, claims[0], room)
    if not claims:
        return []
    return [claims, *_prefetch(context, claims)]


def _claim_more(context: WorkerContext, first: Claim, images: int) -> list[Claim]:
    """Queued jobs that may share `first`'s batch, up to `images` images, claimed now."""
    with session_scope(context.factory) as session:
        return claim_compatible(
            session,
            context.worker_id,
            first.job_id,
            context.effects,
            max_images=images,
            lease_seconds=context.settings.job_lease_seconds,
        )


def _prefetch(context: WorkerContext, first: list[Claim]) -> list[list[Claim]]:
    """The batches to claim with the full batch `first`: queued jobs that may share its batch
    (its model, version and batch key), in as many full batches as this worker expects to run
    in GOSHEN_WORKER_PREFETCH_SECONDS, by how long the last full batch of that model took here
    (none before one ran here: its first batch may load it; none unless two batches fit)."""
    settings = context.settings
    last = context.batch_seconds.get(first[0].model_id)
    if last is None or sum(c.images for c in first) < settings.worker_max_batch_size:
        return []
    batches = min(MAX_PREFETCH_BATCHES, int(settings.worker_prefetch_seconds / max(last, 1e-4)))
    if batches < 2:
        return []
    try:
        following = _claim_more(context, first[0], (batches - 1) * settings.worker_max_batch_size)
    except Exception:  # the claimed batch runs all the same; its end will say if the DB is down
        log.warning(
            "could not claim the batches that follow; running the one claimed", exc_info=True
        )
        return []
    return split_batches(following, settings.worker_max_batch_size)


def recover(context: WorkerContext) -> None:
    """Return the jobs of workers that stopped renewing their leases to the queue (or end them:
    no attempts left, or canceled)."""
    with session_scope(context.factory) as session:
        recovered = transitions.recover_stalled(
            session, context.effects, retry_base_seconds=context.settings.job_retry_base_seconds
        )
    for job in recovered:
        log.warning("recovered job %s from a stalled worker: now %s", job.id, job.status)


def _stop_on_signals(hurry: threading.Event) -> threading.Event:
    """SIGTERM or Ctrl-C: stop claiming and drain; a second one: release at the next step."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.info("signal %d again: releasing the running batch at its next step", signum)
            hurry.set()
            return
        log.info("signal %d: finishing the running batch, claiming nothing new", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop
