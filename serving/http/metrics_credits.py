"""The credits-captured counter, the same in the API (for /predict) and in `goshen worker` (for
jobs): micro-credits moved from holds to spend, counted once the capture commits."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.orm import Session, sessionmaker

from goshen.billing.captures import OTHER, SOURCES, watch_captures


class CreditsCaptured:
    """`goshen_credits_captured_micros_total{source}`: source is what the credit paid for
    (job, predict, training; other for any source not named)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "goshen_credits_captured_micros",
            "Micro-credits captured from holds (spent), by what they paid for: job, predict, "
            "training",
            ["source"],
            registry=registry,
        )
        for source in (*SOURCES, OTHER):
            self.counter.labels(source)  # every series from the start, at 0

    def watch(self, factory: sessionmaker[Session]) -> None:
        """Count every capture committed through `factory`'s sessions."""
        watch_captures(factory, self.count)

    def count(self, source: str, micros: int) -> None:
        self.counter.labels(source).inc(micros)
