"""The API's catalog lookups under load: one database read per key however many requests miss at
once, stale entries served at once while one refresh runs, invalidations that a refresh in flight
cannot undo, and a database outage felt only once entries pass their bound."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, session_scope
from goshen.db.models import Model
from serving.catalog.cache import READER_THREADS, CatalogCache


class ModelReads:
    """Counts the reads of `models` on an engine; those numbered in `hold` wait, once their
    statement has run, until `release` is set."""

    def __init__(self, hold: set[int] | None = None) -> None:
        self.count = 0
        self.hold = hold or set()
        self.held = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, conn: object, cursor: object, statement: str, *_: object) -> None:
        if "FROM models" not in statement:
            return
        with self._lock:
            self.count += 1
            number = self.count
        if number in self.hold:
            self.held.set()
            assert self.release.wait(10), "the test never released a held read"


@pytest.fixture
def read_sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on a read-only engine, as the API gives its catalog cache."""
    engine = make_engine(settings.resolved_database_url, read_only=True)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def model_reads(read_sessions: sessionmaker[Session]) -> Iterator[ModelReads]:
    reads = ModelReads()
    engine: Engine = read_sessions.kw["bind"]
    event.listen(engine, "after_cursor_execute", reads)
    yield reads
    reads.release.set()
    event.remove(engine, "after_cursor_execute", reads)


def _join_background_reads(cache: CatalogCache) -> None:
    """Wait until the cache's reads in flight have ended (white box: its table of reads, which
    a read leaves when it has stored what it read)."""
    deadline = time.monotonic() + 10
    while cache._reads:
        assert time.monotonic() < deadline, "a catalog read did not end"
        time.sleep(0.01)


def _set_price(sessions: sessionmaker[Session], model: Model, price_micros: int) -> None:
    with session_scope(sessions) as session:
        session.execute(update(Model).where(Model.id == model.id).values(price_micros=price_micros))


async def _until(condition: Callable[[], bool]) -> None:
    """Wait on the event loop (a lookup that blocked it would stall this) for `condition`."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _price(model: Model | None) -> int:
    assert model is not None
    return model.price_micros


def test_concurrent_misses_for_one_key_share_one_read(
    read_sessions: sessionmaker[Session], model_reads: ModelReads, catalog_model: Model
) -> None:
    cache = CatalogCache(read_sessions)
    model_reads.hold = {1}

    async def main() -> list[Model | None]:
        lookups = [asyncio.ensure_future(cache.lookup(catalog_model.name)) for _ in range(20)]
        await _until(model_reads.held.is_set)
        await asyncio.sleep(0.1)  # time for any other read to start
        assert not any(lookup.done() for lookup in lookups)
        model_reads.release.set()
        return await asyncio.gather(*lookups)

    found = asyncio.run(main())
    assert {model.id if model else None for model in found} == {catalog_model.id}
    assert model_reads.count == 1


def test_a_stale_entry_is_served_at_once_while_one_refresh_runs(
    sessions: sessionmaker[Session],
    read_sessions: sessionmaker[Session],
    model_reads: ModelReads,
    catalog_model: Model,
) -> None:
    cache = CatalogCache(read_sessions, ttl=0, stale=30)  # stale as soon as read
    model_reads.hold = {2}

    async def main() -> list[int]:
        first = _price(await cache.lookup(catalog_model.name))
        _set_price(sessions, catalog_model, 2000)
        served = [_price(await cache.lookup(catalog_model.name)) for _ in range(10)]
        await _until(model_reads.held.is_set)
        served += [_price(await cache.lookup(catalog_model.name)) for _ in range(10)]
        assert model_reads.count == 2  # the first read and one refresh
        model_reads.release.set()
        _join_background_reads(cache)
        return [first, *served, _price(await cache.lookup(catalog_model.name))]

    prices = asyncio.run(main())
    assert prices[:-1] == [1000] * 21  # the refresh ran after the change; the entry still served
    assert prices[-1] == 2000


def test_an_invalidation_during_a_refresh_is_not_undone(
    sessions: sessionmaker[Session],
    read_sessions: sessionmaker[Session],
    model_reads: ModelReads,
    catalog_model: Model,
) -> None:
    cache = CatalogCache(read_sessions, ttl=0, stale=30)
    model_reads.hold = {2}

    async def main() -> list[int]:
        await cache.lookup(catalog_model.name)
        stale = _price(await cache.lookup(catalog_model.name))  # starts the refresh
        await _until(model_reads.held.is_set)  # the refresh has read the old price
        _set_price(sessions, catalog_model, 2000)
        cache.invalidate(catalog_model.name)
        after = _price(await cache.lookup(catalog_model.name))
        model_reads.release.set()
        _join_background_reads(cache)
        return [stale, after, _price(await cache.lookup(catalog_model.name))]

    assert asyncio.run(main()) == [1000, 2000, 2000]


def _unreachable_database() -> sessionmaker[Session]:
    """Sessions on a PostgreSQL address nothing listens on: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return make_sessionmaker(make_engine(f"postgresql://goshen@127.0.0.1:{port}/goshen", timeout=1))


def test_a_failing_refresh_fails_no_request_until_the_entry_is_past_its_bound(
    read_sessions: sessionmaker[Session], catalog_model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    cache = CatalogCache(read_sessions, ttl=0, stale=1.0)

    async def main() -> None:
        asked = time.monotonic()  # the entry's age counts from a moment after this
        await cache.lookup(catalog_model.name)
        answered = time.monotonic()  # and from one before this
        cache.factory = _unreachable_database()
        with caplog.at_level(logging.WARNING, logger="serving.catalog.cache"):
            while time.monotonic() - asked < 0.5:
                assert _price(await cache.lookup(catalog_model.name)) == 1000
                await asyncio.sleep(0.01)
            _join_background_reads(cache)
        assert any(catalog_model.name in record.getMessage() for record in caplog.records)
        await asyncio.sleep(answered + 1.05 - time.monotonic())
        with pytest.raises(OperationalError):
            await cache.lookup(catalog_model.name)
        cache.factory = read_sessions
        assert _price(await cache.lookup(catalog_model.name)) == 1000

    asyncio.run(main())


def test_past_the_bound_a_caller_waits_for_a_read(
    sessions: sessionmaker[Session],
    read_sessions: sessionmaker[Session],
    model_reads: ModelReads,
    catalog_model: Model,
) -> None:
    cache = CatalogCache(read_sessions, ttl=0, stale=0.2)

    async def main() -> list[int]:
        first = _price(await cache.lookup(catalog_model.name))
        _set_price(sessions, catalog_model, 2000)
        await asyncio.sleep(0.3)
        return [first, _price(await cache.lookup(catalog_model.name))]

    assert asyncio.run(main()) == [1000, 2000]
    assert model_reads.count == 2


def test_reads_of_many_names_share_a_few_threads_and_closing_answers_their_waiters(
    read_sessions: sessionmaker[Session], model_reads: ModelReads, catalog_model: Model
) -> None:
    """A burst of distinct names (each a miss) queues on READER_THREADS threads rather than
    starting one each; closing the cache (the API's shutdown) answers every waiter."""
    cache = CatalogCache(read_sessions)
    model_reads.hold = set(range(1, 100))  # every read waits once it has run

    async def main() -> list[BaseException | Model | None]:
        names = [f"{catalog_model.name}-{number}" for number in range(12)]
        lookups = [asyncio.ensure_future(cache.lookup(name)) for name in names]
        await _until(lambda: model_reads.count >= READER_THREADS)
        await asyncio.sleep(0.1)  # time for any other read to start
        assert model_reads.count == READER_THREADS
        cache.close()
        model_reads.release.set()
        return await asyncio.gather(*lookups, return_exceptions=True)

    answers = asyncio.run(main())
    assert all(isinstance(answer, RuntimeError) for answer in answers[READER_THREADS:])
