"""The dynamic batcher on its own, with plain numpy functions for models."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.predict.batching import INLINE_BELOW_SECONDS, DynamicBatcher


def doubled(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": feeds["x"] * 2, "rows": np.arange(len(feeds["x"]))}


def rows(count: int, start: float) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + count, dtype=np.float32).reshape(count, 1)}


async def gather(batcher: DynamicBatcher, requests: list[dict[str, np.ndarray]]) -> list[dict]:
    """Each request's outputs."""
    answers = await asyncio.gather(*(batcher.predict(r, len(r["x"])) for r in requests))
    return [outputs for outputs, _ in answers]


@pytest.mark.parametrize("call_seconds", [None, 1e-6, 1.0], ids=["unknown", "quick", "slow"])
def test_each_caller_gets_exactly_its_own_rows(call_seconds: float | None) -> None:
    requests = [rows(1 + n % 3, 100 * n) for n in range(20)]
    seen: list[int] = []

    def model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(len(feeds["x"]))
        return doubled(feeds)

    async def main() -> list[dict]:
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(
                model, max_rows=64, max_wait=0.02, executor=pool, call_seconds=call_seconds
            )
            return await gather(batcher, requests)

    answers = asyncio.run(main())
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["y"], request["x"] * 2)
    assert max(seen) > 1 and sum(seen) == sum(len(r["x"]) for r in requests)


def test_a_batch_holds_at_most_max_rows_and_a_lone_request_waits_max_wait() -> None:
    sizes: list[int] = []

    def model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(len(feeds["x"]))
        return doubled(feeds)

    async def main() -> float:
        batcher = DynamicBatcher(model, max_rows=5, max_wait=0.05, call_seconds=1e-6)
        await gather(batcher, [rows(2, n) for n in range(6)])
        started = time.monotonic()
        await batcher.predict(rows(1, 0), 1)
        return time.monotonic() - started

    lone = asyncio.run(main())
    assert max(sizes[:-1]) <= 5 and sum(sizes[:-1]) == 12
    assert lone >= 0.045  # nobody else came: it ran once its wait was over


def test_a_model_without_a_batch_axis_takes_one_request_per_call() -> None:
    sizes: list[int] = []

    def model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(len(feeds["x"]))
        return doubled(feeds)

    async def main() -> None:
        batcher = DynamicBatcher(model, max_rows=64, max_wait=0.01, batchable=False)
        await gather(batcher, [rows(1, n) for n in range(5)])

    asyncio.run(main())
    assert sizes == [1] * 5


def test_a_failed_merged_call_retries_its_requests_alone() -> None:
    """One caller's bad values (here: 666) fail that caller only, never its batch mates."""
    sizes: list[int] = []

    def model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(len(feeds["x"]))
        if (feeds["x"] == 666).any():
            raise RuntimeError("index out of range")
        return doubled(feeds)

    async def main() -> list:
        batcher = DynamicBatcher(model, max_rows=64, max_wait=0.02, call_seconds=1e-6)
        values = [1, 2, 666, 4]
        return await asyncio.gather(
            *(batcher.predict(rows(1, v), 1) for v in values), return_exceptions=True
        )

    answers = asyncio.run(main())
    assert sizes == [4, 1, 1, 1, 1]
    assert isinstance(answers[2], RuntimeError) and "out of range" in str(answers[2])
    assert [a[0]["y"].tolist() for i, a in enumerate(answers) if i != 2] == [[[2]], [[4]], [[8]]]


def test_outputs_without_one_row_per_input_row_stop_the_merging() -> None:
    """A graph whose symbolic first dims are not a batch axis (a Reshape to [-1, 1] here) must
    not hand one caller another's rows: the merged call is detected and each runs alone."""

    def reshaped(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.concatenate([feeds["x"], feeds["x"]]).reshape(-1, 1)}

    async def main() -> tuple[list, int]:
        batcher = DynamicBatcher(reshaped, max_rows=64, max_wait=0.02, call_seconds=1e-6)
        answers = await gather(batcher, [rows(1, v) for v in (1, 2, 3)])
        return answers, batcher.max_rows

    answers, max_rows = asyncio.run(main())
    assert [a["y"].tolist() for a in answers] == [[[1], [1]], [[2], [2]], [[3], [3]]]
    assert max_rows == 1


def test_only_requests_of_the_same_shapes_merge_and_seconds_are_shared_by_rows() -> None:
    sizes: list[tuple[int, int]] = []

    def model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(feeds["x"].shape)
        time.sleep(0.01)
        return {"y": feeds["x"].sum(axis=1)}

    async def main() -> list:
        batcher = DynamicBatcher(model, max_rows=64, max_wait=0.02, call_seconds=1e-6)
        shaped = [np.ones((1, 2)), np.ones((3, 5)), np.ones((3, 2)), np.ones((2, 5))]
        return await asyncio.gather(*(batcher.predict({"x": x}, len(x)) for x in shaped))

    answers = asyncio.run(main())
    assert sorted(sizes) == [(4, 2), (5, 5)]
    assert [a[0]["y"].tolist() for a in answers] == [[2.0], [5.0] * 3, [2.0] * 3, [5.0] * 2]
    one, three = answers[0][1], answers[2][1]  # the same call: 1 row and 3 rows of it
    assert three == pytest.approx(3 * one) and one + three >= 0.01


def test_quick_models_run_on_the_loop_and_slow_ones_in_the_executor() -> None:
    """A slow model's call must leave the event loop free; a quick one skips the thread hop."""
    threads: list[str] = []

    def model(seconds: float) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            threads.append(threading.current_thread().name)
            time.sleep(seconds)
            return doubled(feeds)

        return run

    async def main() -> tuple[float, float | None]:
        with ThreadPoolExecutor(1, thread_name_prefix="predict") as pool:
            quick = DynamicBatcher(model(0), max_rows=8, max_wait=0, executor=pool, call_seconds=0)
            await quick.predict(rows(1, 0), 1)
            slow = DynamicBatcher(model(0.2), max_rows=8, max_wait=0, executor=pool)
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            await slow.predict(rows(1, 0), 1)
            ticker.cancel()
            return ticks, slow.call_seconds

    ticks, measured = asyncio.run(main())
    assert threads[0] == threading.main_thread().name and threads[1].startswith("predict")
    assert ticks >= 5  # the loop kept running while the slow call computed
    assert measured is not None and measured > INLINE_BELOW_SECONDS  # so it stays in the executor
