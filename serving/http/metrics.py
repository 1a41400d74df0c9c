"""Prometheus metrics for the API: request counts and latencies by route template, /predict's
latency and batching by model, rate-limit refusals, credit captured, and what the database
holds at scrape time (the queue, workers' heartbeats, the webhook outbox:
serving.http.metrics_database)."""

from __future__ import annotations

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy.orm import Session, sessionmaker

from goshen.billing.rate_limits import FAILED_AUTH, RouteClass
from goshen.config import Settings
from serving.http.metrics_credits import CreditsCaptured
from serving.http.metrics_database import DatabaseCollector, DatabaseFigures

# A worker silent for this many heartbeat intervals is stale, as in /v1/admin/workers.
STALE_HEARTBEATS = 3
PREDICT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.figures = DatabaseFigures()
        self.stale_after_seconds = STALE_HEARTBEATS * settings.worker_heartbeat_seconds
        self.requests = Counter(
            "goshen_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "goshen_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )

        self.predict_batch = Histogram(
            "goshen_predict_batch_requests",
            "Requests merged into one model call by /predict's dynamic batching",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.predict_latency = Histogram(
            "goshen_predict_duration_seconds",
            "Time to answer a /predict request that succeeded, from its arrival at the route "
            "(authentication, reserving credit, queueing for and running the model call)",
            ["model"],
            buckets=PREDICT_BUCKETS,
            registry=self.registry,
        )
        self._predict_children: dict[str, Histogram] = {}
        # Series by labels: `labels` takes the metric's lock and builds its key on every call.
        self._request_counts: dict[tuple[str, str, str], Counter] = {}
        self._request_latencies: dict[tuple[str, str], Histogram] = {}
        self.rate_limit_refusals = Counter(
            "goshen_rate_limit_refusals",
            "Requests refused with 429 by a rate limit, by route class (generate, predict, "
            "default; failed-auth: an address past its failed authentications)",
            ["route_class"],
            registry=self.registry,
        )
        for route_class in (*RouteClass, FAILED_AUTH):
            self.rate_limit_refusals.labels(str(route_class))  # every series from the start
        self.credits = CreditsCaptured(self.registry)

    def predicted(self, model: str, seconds: float) -> None:
        """A /predict request for `model` succeeded in `seconds`."""
        child = self._predict_children.get(model)
        if child is None:  # once per model: `labels` takes the histogram's lock
            child = self._predict_children[model] = self.predict_latency.labels(model)
        child.observe(seconds)

    def answered(self, method: str, route: str, status: int, seconds: float) -> None:
        """An HTTP request answered `status` in `seconds`; `route` is its template
        (/v1/keys/{key_id}), never the raw path, so the series stay few."""
        counted = (method, route, str(status))
        count = self._request_counts.get(counted)
        if count is None:
            count = self._request_counts[counted] = self.requests.labels(*counted)
        count.inc()
        timed = (method, route)
        latency = self._request_latencies.get(timed)
        if latency is None:
            latency = self._request_latencies[timed] = self.latency.labels(*timed)
        latency.observe(seconds)

    def refused(self, route_class: str) -> None:
        """A rate limit refused a request of `route_class`."""
        self.rate_limit_refusals.labels(route_class).inc()

    def render(self, sessions: sessionmaker[Session] | None = None) -> Response:
        """The exposition; with `sessions`, the figures read from the database."""
        body = generate_latest(self.registry)
        if sessions is not None:
            database = CollectorRegistry(auto_describe=False)
            collector = DatabaseCollector(
                lambda: self.figures.get(sessions), self.stale_after_seconds
            )
            database.register(collector)
            body += generate_latest(database)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
