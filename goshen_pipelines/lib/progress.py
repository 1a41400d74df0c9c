"""Progress of a long plain function, told to a callback at a bounded rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Report = Callable[[dict[str, Any]], None]
STEP_PERCENT = 5
INTERVAL_SECONDS = 1.0


class Progress:
    """Work in stages, each taking the whole up to a share of it, told to `report` as
    `{"stage", "done", "total", "unit", "percent"}` (percent of the whole, 0-100): when a stage
    starts, when it ends, and between whenever the whole moved 5 points or a second passed
    since the last report, so a report per file or row never reaches the callback."""

    def __init__(
        self, report: Report | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._report = report
        self._clock = clock
        self._stage, self._unit = "", ""
        self._done = self._total = 0
        self._start = self._until = 0
        self._sent: dict[str, Any] | None = None
        self._sent_at = clock()

    def stage(self, name: str, total: int, unit: str, *, until: int) -> None:
        """Begin `name`: `total` units of work that take the whole to `until` percent."""
        self._start = self._until
        self._stage, self._total, self._unit, self._until, self._done = name, total, unit, until, 0
        self._send()

    def advance(self, count: int = 1) -> None:
        """`count` more units of the stage are done."""
        self._done = min(self._done + count, self._total)
        if self._report is None:
            return
        moved = self._sent is None or self.percent >= self._sent["percent"] + STEP_PERCENT
        if moved or self._done == self._total or self._clock() - self._sent_at >= INTERVAL_SECONDS:
            self._send()

    @property
    def percent(self) -> int:
        if self._total == 0:
            return self._until
        return self._start + (self._until - self._start) * self._done // self._total

    def _send(self) -> None:
        if self._report is None:
            return
        current = {
            "stage": self._stage,
            "done": self._done,
            "total": self._total,
            "unit": self._unit,
            "percent": self.percent,
        }
        if current != self._sent:
            self._report(current)
            self._sent, self._sent_at = current, self._clock()
