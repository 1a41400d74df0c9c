"""Dynamic batching for /predict: concurrent requests for one model run as one call.

Requests queue per model version. While one batch runs (in a thread, so the event loop keeps
taking requests), the next one fills; a batch starts when it holds `max_rows` rows or when its
first request has waited `max_wait` seconds, whichever comes first. Only requests whose inputs
agree beyond the batch axis are merged. Inputs are concatenated along the batch axis and the
outputs split back, so each caller gets exactly its own rows; a model whose outputs do not have
one row per input row is not batchable after all, and from then on takes requests one at a time.
When a merged call fails, each of its requests runs again alone, so one caller's input cannot fail
another's. One batch per model is in flight at a time: the model's session already uses the cores
it is given.

A model whose calls are quick (INLINE_BELOW_SECONDS, measured as it serves) runs on the event
loop itself: handing a call of a few microseconds to a thread and back costs more than the call
(a thread switch, and the GIL handed over twice), and requests that arrive meanwhile still wait in
the socket buffers to join the next batch. A slower model runs in the executor, so the loop keeps
answering other requests while it computes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

Arrays = dict[str, np.ndarray]
# Calls shorter than this on average run on the event loop (see the module's docstring).
INLINE_BELOW_SECONDS = 0.0005


@dataclass
class _Request:
    feeds: Arrays
    rows: int
    future: asyncio.Future[tuple[Arrays, float]]
    # Requests merge only with others of the same shapes beyond the batch axis.
    shapes: tuple[tuple[int, ...], ...]
    queued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Merges concurrent predictions for one model; `run(feeds) -> outputs` is the model call."""

    def __init__(
        self,
        run: Callable[[Arrays], Arrays],
        *,
        max_rows: int,
        max_wait: float,
        batchable: bool = True,
        executor: Executor | None = None,
        call_seconds: float | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run = run
        # A model whose batch axis is fixed takes its requests one at a time.
        self.max_rows = max_rows if batchable else 1
        self.max_wait = max_wait
        self.executor = executor
        self.batch_sizes: Counter[int] = Counter()  # requests merged per call, for tests
        self.on_batch = on_batch  # told how many requests each call merged (metrics)
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        # A moving average of a call's seconds (None: unknown, so calls start in the executor).
        self.call_seconds = call_seconds

    async def predict(self, feeds: Arrays, rows: int) -> tuple[Arrays, float]:
        """The model's outputs for these rows, computed in a batch with whoever else is waiting,
        and this request's share of the call's seconds (by rows), for metering."""
        future: asyncio.Future[tuple[Arrays, float]] = asyncio.get_running_loop().create_future()
        shapes = tuple([array.shape[1:] for array in feeds.values()])
        self._queue.append(_Request(feeds, rows, future, shapes))
        self._queued_rows += rows
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await self._fill()
            batch = self._take()
            try:
                outputs, took = await self._call(_concatenate([r.feeds for r in batch]))
                if len(batch) > 1:
                    _check_rows(outputs, sum(r.rows for r in batch))
            except Exception as exc:  # noqa: BLE001 - handed to the callers
                if len(batch) == 1:
                    _fail(batch[0], exc)
                    continue
                if isinstance(exc, MisalignedOutputsError):
                    self.max_rows = 1  # its outputs are not row-wise: never merge again
                for request in batch:  # one request's input must not fail the others
                    await self._run_alone(request)
                continue
            self._record(len(batch))
            _hand_out(batch, outputs, took)

    async def _run_alone(self, request: _Request) -> None:
        try:
            outputs, took = await self._call(request.feeds)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            _fail(request, exc)
            return
        self._record(1)
        _hand_out([request], outputs, took)

    def _record(self, requests: int) -> None:
        self.batch_sizes[requests] += 1
        if self.on_batch is not None:
            self.on_batch(requests)

    async def _call(self, feeds: Arrays) -> tuple[Arrays, float]:
        """The model's outputs and the call's seconds: on the loop when its calls are known to be
        quick, else in the executor; either way the seconds update the average that decides."""
        inline = self.call_seconds is not None and self.call_seconds < INLINE_BELOW_SECONDS
        if inline:
            outputs, took = self._timed_run(feeds)
        else:
            outputs, took = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._timed_run, feeds
            )
        average = self.call_seconds
        self.call_seconds = took if average is None else average + (took - average) / 8
        if inline:
            await asyncio.sleep(0)  # let the requests that arrived meanwhile in
        return outputs, took

    def _timed_run(self, feeds: Arrays) -> tuple[Arrays, float]:
        # Timed where it runs: in a thread, the wait to get back onto the loop is not the call's
        # (what the thread waits for the GIL still counts, which only errs toward the executor).
        started = time.perf_counter()
        outputs = self.run(feeds)
        return outputs, time.perf_counter() - started

    async def _fill(self) -> None:
        """Wait until the queue holds a full batch or its oldest request has waited long enough."""
        while self._queued_rows < self.max_rows:
            remaining = self._queue[0].queued_at + self.max_wait - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Request]:
        """The oldest request and the next ones of its shapes that fit beside it in one batch;
        requests of other shapes keep their places for the next batch."""
        first = self._queue.popleft()
        batch, rows, others = [first], first.rows, []
        while self._queue and rows < self.max_rows:
            request = self._queue.popleft()
            if request.shapes == first.shapes and rows + request.rows <= self.max_rows:
                batch.append(request)
                rows += request.rows
            else:
                others.append(request)
        self._queue.extendleft(reversed(others))
        self._queued_rows -= rows
        return batch


class MisalignedOutputsError(RuntimeError):
    """A merged call's outputs do not have one row per input row."""


def _check_rows(outputs: Arrays, rows: int) -> None:
    for name, value in outputs.items():
        if value.ndim == 0 or len(value) != rows:
            got = "a scalar" if value.ndim == 0 else f"{len(value)} rows"
            raise MisalignedOutputsError(f"output {name} has {got} for {rows} input rows")


def _concatenate(feeds: list[Arrays]) -> Arrays:
    if len(feeds) == 1:
        return feeds[0]
    return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}


def _fail(request: _Request, exc: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(exc)


def _hand_out(batch: list[_Request], outputs: Arrays, took: float) -> None:
    """Each request's own rows of every output, in the order it sent them, with its share of
    the call's seconds."""
    if len(batch) == 1:  # nothing to split: a model without a batch axis answers whole
        if not batch[0].future.done():
            batch[0].future.set_result((outputs, took))
        return
    start, total = 0, sum(request.rows for request in batch)
    for request in batch:
        end = start + request.rows
        if not request.future.done():  # a caller that went away no longer waits
            own = {name: value[start:end] for name, value in outputs.items()}
            request.future.set_result((own, took * request.rows / total))
        start = end
