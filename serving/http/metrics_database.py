"""What the API's /metrics reads from the database at scrape time: the queue by model, the
workers' heartbeats and memory, and the webhook outbox.

Counting rows rather than counting events in each process keeps the figures right with any
number of API replicas, workers and dispatchers, across their restarts. Each replica reads them
at most every `DatabaseFigures.seconds` (every replica is scraped and each answers the same);
ages are computed at every scrape from the timestamps read. While the database does not answer,
a scrape leaves these out and still answers (readiness reports the database).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from goshen.catalog import metric_label
from goshen.db.models import (
    DeliveryStatus,
    Job,
    JobStatus,
    Model,
    WebhookDelivery,
    Worker,
    WorkerStatus,
    in_sql,
    utcnow,
)
from serving.webhooks.stats import DeliveryCounts, delivery_counts

log = logging.getLogger(__name__)
# How long a replica reuses what it read: the outbox's counts scan its table.
FIGURES_SECONDS = 15.0
# Workers not stopped but silent for longer are left out (a worker killed outright never says
# it stopped): the series of each worker id ends this long after its last heartbeat.
WORKER_HORIZON = timedelta(minutes=15)
STALE = "stale"


@dataclass(frozen=True)
class ModelQueue:
    """A model's jobs now: queued, running, and when its oldest due queued job became due."""

    queued: int = 0
    running: int = 0
    oldest_due: datetime | None = None


@dataclass(frozen=True)
class WorkerBeat:
    """A worker as its last heartbeat left it."""

    id: str
    device: str
    status: WorkerStatus
    heartbeat_at: datetime
    memory_used_bytes: int | None


@dataclass(frozen=True)
class Figures:
    """One read of the database's figures."""

    queue: dict[str, ModelQueue]
    workers: list[WorkerBeat]
    deliveries: DeliveryCounts
    due_deliveries: int
    oldest_due_delivery: datetime | None


def read_figures(factory: sessionmaker[Session]) -> Figures:
    """The queue by model name, the workers heartbeating within WORKER_HORIZON, the outbox."""
    now = utcnow()
    counts: dict[tuple[str, JobStatus], tuple[int, datetime | None]] = {}
    with factory() as session:
        rows = session.execute(
            select(
                Model.name,
                Model.owner_id,
                Job.status,
                func.count(),
                func.min(case((Job.run_after <= now, Job.run_after))),
            )
            .join(Model, Model.id == Job.model_id)
            .where(Job.status.in_([JobStatus.queued, JobStatus.running]))
            .group_by(Model.name, Model.owner_id, Job.status)
        ).all()
        for name, owner_id, status, count, oldest_due in rows:
            # Customers' models share one label (goshen.catalog.metric_label): summed here.
            key = (metric_label(name, owner_id), JobStatus(status))
            had, had_oldest = counts.get(key, (0, None))
            dues = [due for due in (had_oldest, oldest_due) if due is not None]
            counts[key] = (had + count, min(dues) if dues else None)
        workers = [
            WorkerBeat(id, device or "unknown", WorkerStatus(status), beat, memory)
            for id, device, status, beat, memory in session.execute(
                select(
                    Worker.id,
                    Worker.device,
                    Worker.status,
                    Worker.heartbeat_at,
                    Worker.memory_used_bytes,
                ).where(
                    Worker.status != WorkerStatus.stopped,
                    Worker.heartbeat_at >= now - WORKER_HORIZON,
                )
            )
        ]
        due, oldest = session.execute(
            select(func.count(), func.min(WebhookDelivery.next_attempt_at)).where(
                WebhookDelivery.status == in_sql(DeliveryStatus.pending),
                WebhookDelivery.next_attempt_at <= now,
            )
        ).one()
    queue = {
        name: ModelQueue(
            queued=counts.get((name, JobStatus.queued), (0, None))[0],
            running=counts.get((name, JobStatus.running), (0, None))[0],
            oldest_due=counts.get((name, JobStatus.queued), (0, None))[1],
        )
        for name, _ in counts
    }
    return Figures(
        queue=queue,
        workers=workers,
        deliveries=delivery_counts(factory),
        due_deliveries=int(due or 0),
        oldest_due_delivery=oldest,
    )


@dataclass
class DatabaseFigures:
    """The figures, read again once they are `seconds` old."""

    seconds: float = FIGURES_SECONDS
    read: Callable[[sessionmaker[Session]], Figures] = read_figures
    _cached: tuple[float, Figures] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, factory: sessionmaker[Session]) -> Figures:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] >= self.seconds:
                self._cached = (time.monotonic(), self.read(factory))
            return self._cached[1]


class DatabaseCollector(Collector):
    """The figures as Prometheus gauges; none while the database does not answer. Workers are
    `stale` once silent for `stale_after_seconds` (as /v1/admin/workers says)."""

    def __init__(self, figures: Callable[[], Figures], stale_after_seconds: float) -> None:
        self.figures = figures
        self.stale_after_seconds = stale_after_seconds

    def collect(self) -> Iterator[Metric]:
        try:
            figures = self.figures()
        except SQLAlchemyError as exc:
            log.warning("database figures for /metrics unavailable: %s", exc)
            return
        now = utcnow()
        yield from _queue(figures, now)
        yield from _workers(figures, now, self.stale_after_seconds)
        yield from _webhooks(figures, now)


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


def _queue(figures: Figures, now: datetime) -> Iterator[Metric]:
    queued = GaugeMetricFamily(
        "goshen_jobs_queued",
        "Jobs waiting in the queue, by model (those waiting out a retry's backoff included)",
        labels=["model"],
    )
    running = GaugeMetricFamily("goshen_jobs_running", "Jobs running, by model", labels=["model"])
    oldest = GaugeMetricFamily(
        "goshen_jobs_queued_oldest_age_seconds",
        "How long the oldest queued job that is due to run has waited for a worker, by model "
        "(0 when none is due)",
        labels=["model"],
    )
    for model, figure in sorted(figures.queue.items()):
        if figure.queued:
            queued.add_metric([model], figure.queued)
            oldest.add_metric([model], _age(now, figure.oldest_due))
        if figure.running:
            running.add_metric([model], figure.running)
    yield from (queued, running, oldest)


def _workers(figures: Figures, now: datetime, stale_after_seconds: float) -> Iterator[Metric]:
    statuses = {status.value: 0 for status in WorkerStatus if status != WorkerStatus.stopped}
    statuses[STALE] = 0
    ages = GaugeMetricFamily(
        "goshen_worker_heartbeat_age_seconds",
        "Seconds since each worker's last heartbeat (workers not stopped, silent for at most "
        f"{int(WORKER_HORIZON.total_seconds())} s)",
        labels=["worker", "device"],
    )
    memory = GaugeMetricFamily(
        "goshen_worker_heartbeat_memory_used_bytes",
        "Memory each worker used on its device at its last heartbeat",
        labels=["worker", "device"],
    )
    for worker in figures.workers:
        age = _age(now, worker.heartbeat_at)
        statuses[STALE if age > stale_after_seconds else worker.status.value] += 1
        ages.add_metric([worker.id, worker.device], age)
        if worker.memory_used_bytes is not None:
            memory.add_metric([worker.id, worker.device], worker.memory_used_bytes)
    counts = GaugeMetricFamily(
        "goshen_workers",
        "Workers by status: idle, busy, draining, unhealthy, or stale (not stopped, but silent "
        "for 3 heartbeat intervals)",
        labels=["status"],
    )
    for status, count in statuses.items():
        counts.add_metric([status], count)
    yield from (counts, ages, memory)


def _webhooks(figures: Figures, now: datetime) -> Iterator[Metric]:
    by_status, by_reason = figures.deliveries
    statuses = GaugeMetricFamily(
        "goshen_webhook_deliveries",
        "Webhook deliveries (one per job and event) by status: pending, delivered, failed",
        labels=["status"],
    )
    for status, count in by_status.items():
        statuses.add_metric([status], count)
    reasons = GaugeMetricFamily(
        "goshen_webhook_deliveries_failed",
        "Failed webhook deliveries by reason: refused (the URL, for good, after one "
        "attempt), gone (a 410 answer), exhausted (every retry failed)",
        labels=["reason"],
    )
    for reason, count in by_reason.items():
        reasons.add_metric([reason], count)
    due = GaugeMetricFamily(
        "goshen_webhook_deliveries_due",
        "Pending webhook deliveries whose next attempt is due now: the dispatchers' backlog",
        value=figures.due_deliveries,
    )
    oldest = GaugeMetricFamily(
        "goshen_webhook_deliveries_oldest_due_age_seconds",
        "How long the oldest due webhook delivery has waited for a dispatcher (0 when none is)",
        value=_age(now, figures.oldest_due_delivery),
    )
    yield from (statuses, reasons, due, oldest)
