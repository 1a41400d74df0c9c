"""What a worker's batches share: settings, database, store, caches, health, stop signals."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import Model
from goshen.storage import ArtifactStore
from serving.catalog.cache import CatalogCache
from serving.jobs.effects import JobEffects
from serving.worker.generator_cache import GeneratorCache
from serving.worker.outages import DependencyHealth

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
    generators: GeneratorCache
    stop: threading.Event = field(default_factory=threading.Event)
    hurry: threading.Event = field(default_factory=threading.Event)  # a second stop signal
    stop_requested_at: float | None = None
    health: DependencyHealth = field(default_factory=DependencyHealth)
    # Seconds the last batch of each model (by id) took here to generate and store, when it
    # succeeded (a failed one drops its model's entry): the prefetch's guide.
    batch_seconds: dict[str, float] = field(default_factory=dict)
    catalog: CatalogCache = field(init=False)
    effects: JobEffects = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = CatalogCache(self.factory, CATALOG_TTL_SECONDS, by=Model.id)
        self.effects = JobEffects(self.store, self.settings.api_url)

    def catalog_entry(self, model_id: str) -> Model:
        """The model's catalog row, read again once it is CATALOG_TTL_SECONDS old."""
        model = self.catalog.get(model_id)
        assert model is not None, "catalog entries with jobs are never deleted (RESTRICT)"
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
