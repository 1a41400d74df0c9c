"""Progress reaches its callback at a bounded rate: per 5 % or per second, not per unit."""

from __future__ import annotations

from typing import Any

from goshen_pipelines.lib.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ten_thousand_steps_are_reported_every_five_percent() -> None:
    reports: list[dict[str, Any]] = []
    progress = Progress(reports.append, clock=Clock())
    progress.stage("decoding images", 10_000, "files", until=100)
    for _ in range(10_000):
        progress.advance()
    assert [r["percent"] for r in reports] == list(range(0, 101, 5))
    assert reports[-1] == {
        "stage": "decoding images",
        "done": 10_000,
        "total": 10_000,
        "unit": "files",
        "percent": 100,
    }


def test_slow_steps_are_reported_once_a_second() -> None:
    clock, reports = Clock(), list[dict[str, Any]]()
    progress = Progress(reports.append, clock=clock)
    progress.stage("reading rows", 1000, "rows", until=50)
    for _ in range(30):  # 0.3 % each, a quarter of a second apart
        clock.now += 0.25
        progress.advance()
    assert [r["done"] for r in reports] == [0, 4, 8, 12, 16, 20, 24, 28]
    progress.stage("writing parquet", 1000, "rows", until=100)
    progress.advance(1000)
    assert [r["percent"] for r in reports[-2:]] == [50, 100]  # the second stage starts at 50


def test_without_a_callback_nothing_is_reported() -> None:
    progress = Progress()
    progress.stage("reading rows", 2, "rows", until=100)
    progress.advance(5)
    assert progress.percent == 100
