"""Prometheus metrics for the API: request counts and latencies by route template, how many
requests /predict merged into each model call, and webhook deliveries by status and by why
they failed (counted in the database at scrape time)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.webhooks.stats import DeliveryCounts, delivery_counts

log = logging.getLogger(__name__)
# How long /metrics reuses the webhook delivery counts it read.
WEBHOOK_COUNTS_SECONDS = 15.0


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counts: tuple[float, DeliveryCounts] | None = None
        self._counts_lock = threading.Lock()
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

    def render(self, sessions: sessionmaker[Session] | None = None) -> Response:
        """The exposition; with `sessions`, webhook delivery counts read from the database."""
        body = generate_latest(self.registry)
        if sessions is not None:
            webhooks = CollectorRegistry(auto_describe=False)
            webhooks.register(_WebhookDeliveries(lambda: self._delivery_counts(sessions)))
            body += generate_latest(webhooks)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def _delivery_counts(self, sessions: sessionmaker[Session]) -> DeliveryCounts:
        """The outbox's counts, read at most every WEBHOOK_COUNTS_SECONDS: counting scans the
        table, and every replica is scraped (the counts are the same from each)."""
        with self._counts_lock:
            if self._counts is None or time.monotonic() - self._counts[0] >= WEBHOOK_COUNTS_SECONDS:
                self._counts = (time.monotonic(), delivery_counts(sessions))
            return self._counts[1]


class _WebhookDeliveries(Collector):
    """Outbox rows by status, and failed ones by reason; nothing while the database is down
    (readiness reports that), so a scrape still answers."""

    def __init__(self, counts: Callable[[], DeliveryCounts]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        try:
            by_status, by_reason = self.counts()
        except SQLAlchemyError as exc:
            log.warning("webhook delivery counts unavailable: %s", exc)
            return
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
        yield statuses
        yield reasons


class _Measure:
    """Pure ASGI middleware (no per-request task or body buffering, unlike BaseHTTPMiddleware):
    counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # Label by template (/v1/keys/{key_id}), never by raw path: bounded cardinality.
            template = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI) -> ApiMetrics:
    metrics = ApiMetrics()
    app.add_middleware(_Measure, metrics=metrics)
    return metrics
