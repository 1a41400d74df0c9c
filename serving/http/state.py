"""The API process's long-lived parts, built once by the app's lifespan (serving.app)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.storage import ArtifactStore
from serving.catalog.cache import CatalogCache
from serving.http.inflight import Lanes
from serving.http.metrics import ApiMetrics
from serving.http.principal_cache import PrincipalCache
from serving.http.rate_limits import RateLimits
from serving.http.streams import StreamHub
from serving.jobs.effects import JobEffects
from serving.jobs.watch import JobWatcher
from serving.predict.credit import PredictCredit
from serving.predict.metering import UsageRecorder
from serving.predict.models import PredictModels


@dataclass(frozen=True)
class ApiState:
    """What every request may use; routes receive each part through serving.http.dependencies."""

    settings: Settings
    engine: Engine
    read_engine: Engine  # read-only: no write lock on SQLite, READ ONLY on PostgreSQL
    sessions: sessionmaker[Session]  # writes
    read_sessions: sessionmaker[Session]  # on the read-only engine
    store: ArtifactStore
    metrics: ApiMetrics
    job_watcher: JobWatcher
    job_effects: JobEffects
    principals: PrincipalCache
    catalog: CatalogCache
    predict_models: PredictModels
    usage: UsageRecorder
    predict_credit: PredictCredit | None  # None: billing is off
    rate_limits: RateLimits
    streams: StreamHub  # open event streams, told to end when the server stops
    lanes: Lanes  # requests in flight per account, submission turns, hot-read threads
