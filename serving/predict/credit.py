"""Credit for /predict without a database transaction per request: each API process holds
credit in chunks, per API key, and spends it in memory.

A request reserves the most it may cost from its key's chunk before the model runs (request and
image pricing: exactly its cost; second pricing: RESERVED_SECONDS of compute) and settles the
difference when the model has answered. Only when a chunk is short does the request wait for a
transaction, which ends the old chunk (capture what it spent, release the rest) and holds the
next, in one go, with the same checks as a generation job: 402 when the account's available
credit is short (never for admins and unmetered accounts), 402 of its own type past the key's
monthly spend cap. A chunk is at most GOSHEN_PREDICT_CREDIT_CHUNK_MICROS, and never more than a
quarter of what the account has available, so several API processes share a small balance.

Every ROTATE_SECONDS, or IDLE_SECONDS after its last request, a chunk is ended by a thread of its
own, so held credit returns to the account and spend caps and balances stay current. The ledger
moves once per chunk (source `predict:<process>:<key>:<n>`), while usage events stay one per
request (serving.predict.metering). An end that cannot be written is retried every tick. A
process killed outright leaves its chunks held: any API process releases holds older than
STALE_SECONDS that nothing ended, uncharged (the platform, not the customer, bears what that
process served in its last seconds).

Whatever a key spent past its chunk (second pricing beyond the reservation) is carried into its
next chunk: the balance never goes below zero, since a capture never exceeds its hold.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from goshen import catalog
from goshen.accounts import Principal
from goshen.billing import ledger, spend_caps
from goshen.db import session_scope
from goshen.db.models import (
    LedgerEntryKind,
    Model,
    PredictCreditChunk,
    PricingUnit,
    Role,
    utcnow,
)
from goshen.errors import GoshenError, InsufficientCreditError, SpendCapExceededError
from goshen.ids import new_id

SOURCE_PREFIX = "predict:"
RESERVED_SECONDS = 1.0  # second-priced models: what a request reserves before it runs
ROTATE_SECONDS = 30.0
IDLE_SECONDS = 5.0
TICK_SECONDS = 1.0
STALE_SECONDS = 600.0
SWEEP_SECONDS = 60.0
REFUSAL_SECONDS = 1.0
log = logging.getLogger(__name__)


@dataclass
class _Chunk:
    """Credit one key holds in this process: `held` in the ledger under `source`, `used` of
    it spent or reserved by requests."""

    source: str
    user_id: str
    held: int
    used: int = 0
    opened: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def left(self) -> int:
        return self.held - self.used


class PredictCredit:
    """The process's chunks, by API key id."""

    def __init__(self, sessions: sessionmaker[Session], *, chunk_micros: int) -> None:
        self.sessions = sessions
        self.chunk_micros = chunk_micros
        self.process = new_id("prc")
        self._chunks: dict[str, _Chunk] = {}
        self._carried: dict[str, int] = {}  # spent past a chunk that ended: the next one pays
        self._unended: list[tuple[str, _Chunk]] = []  # chunks whose end failed, to retry
        self._lock = threading.Lock()  # the event loop and the rotating thread share the dicts
        # One refill per key at a time, awaited on the event loop: requests waiting for it hold
        # no worker thread.
        self._refilling: dict[str, asyncio.Lock] = {}
        # Keys refused credit lately: until when, for requests reserving at least how much.
        self._refusals: dict[str, tuple[float, int, GoshenError]] = {}
        self._sequence = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predict-credit", daemon=True)
        self._last_sweep = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End every chunk (capture what it spent, release the rest)."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)
        self._end_chunks(lambda chunk: True)

    async def reserve(self, principal: Principal, model: Model, rows: int) -> int:
        """Reserve the most this request may cost from its key's chunk, refilling it first
        when short (InsufficientCreditError or SpendCapExceededError then, before the model
        runs). What was reserved, for `settle`."""
        reserved = reservation(model, rows)
        key_id = principal.key.id
        if self._take(key_id, reserved):
            return reserved
        refilling = self._refilling.setdefault(key_id, asyncio.Lock())
        async with refilling:
            if not self._take(key_id, reserved):  # unless the refill before made room
                await run_in_threadpool(self._refill, principal, reserved)
        return reserved

    def _take(self, key_id: str, reserved: int) -> bool:
        """Reserve from the key's chunk if it has room; whether it had."""
        with self._lock:
            chunk = self._chunks.get(key_id)
            if chunk is None or chunk.left < reserved:
                return False
            chunk.used += reserved
            chunk.last_used = time.monotonic()
            return True

    def settle(self, principal: Principal, reserved: int, cost_micros: int) -> None:
        """Count what the request cost instead of what it reserved."""
        if cost_micros == reserved:
            return
        with self._lock:
            chunk = self._chunks.get(principal.key.id)
            if chunk is not None:
                chunk.used += cost_micros - reserved
            else:
                key_id = principal.key.id
                self._carried[key_id] = self._carried.get(key_id, 0) + cost_micros - reserved

    def _refill(self, principal: Principal, reserved: int) -> None:
        """End the key's chunk and hold the next, with `reserved` of it taken (one refill per
        key at a time: see `reserve`). A refusal is remembered for REFUSAL_SECONDS, so a client
        without credit costs no transaction per request."""
        key_id = principal.key.id
        with self._lock:
            refusal = self._refusals.get(key_id)
            if refusal is not None and refusal[0] > time.monotonic() and refusal[1] <= reserved:
                raise refusal[2]
            old = self._chunks.pop(key_id, None)
            carried = self._carried.pop(key_id, 0)
        try:
            with session_scope(self.sessions) as session:
                over = _end(session, old) if old is not None else 0
                new = self._hold(session, principal, carried + over + reserved)
        except BaseException as exc:
            with self._lock:  # nothing was written: the old chunk goes on as it was
                if old is not None:
                    self._chunks[key_id] = old
                if carried:
                    self._carried[key_id] = self._carried.get(key_id, 0) + carried
                if isinstance(exc, InsufficientCreditError | SpendCapExceededError):
                    until = time.monotonic() + REFUSAL_SECONDS
                    self._refusals[key_id] = (until, reserved, exc)
            raise
        new.used = carried + over + reserved
        with self._lock:
            self._chunks[key_id] = new
            self._refusals.pop(key_id, None)

    def _hold(self, session: Session, principal: Principal, need: int) -> _Chunk:
        """Hold the key's next chunk: the most it may, and at least `need`."""
        user, key = principal.user, principal.key
        metered = not (user.role == Role.admin or user.unmetered)
        size = self.chunk_micros
        if metered:
            available = ledger.lock(session, user.id).available_micros
            size = min(size, available // 4)
        if key.monthly_spend_cap_micros is not None:
            committed = spend_caps.spend(session, key.id).committed_micros
            size = min(size, (key.monthly_spend_cap_micros - committed) // 4)
        size = max(size, need)
        source = f"{SOURCE_PREFIX}{self.process}:{key.id}:{next(self._sequence)}"
        ledger.hold(
            session,
            user_id=user.id,
            source=source,
            amount_micros=size,
            refuse_short=metered,
            api_key_id=key.id,
            spend_cap_micros=key.monthly_spend_cap_micros,
        )
        session.add(PredictCreditChunk(source=source, user_id=user.id))
        return _Chunk(source, user.id, size)

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self._end_chunks(_due)
                if time.monotonic() - self._last_sweep >= SWEEP_SECONDS:
                    self._last_sweep = time.monotonic()
                    release_stale_chunks(self.sessions, timedelta(seconds=STALE_SECONDS))
            except Exception:
                log.exception("could not end predict credit chunks; retrying")

    def _end_chunks(self, due: Callable[[_Chunk], bool]) -> None:
        """End the chunks `due` picks, and retry those whose end could not be written before
        (ending is once per chunk: a retry after a lost answer charges nothing twice)."""
        with self._lock:
            ending = [(key, chunk) for key, chunk in self._chunks.items() if due(chunk)]
            for key, _ in ending:
                del self._chunks[key]
            ending += self._unended
            self._unended = []
        for key_id, chunk in ending:
            try:
                with session_scope(self.sessions) as session:
                    owed = _end(session, chunk)
            except Exception:
                log.exception("could not end predict credit chunk %s; retrying", chunk.source)
                with self._lock:
                    self._unended.append((key_id, chunk))
                continue
            if owed:
                with self._lock:
                    self._carried[key_id] = self._carried.get(key_id, 0) + owed


def _due(chunk: _Chunk) -> bool:
    """A chunk to end now: open for ROTATE_SECONDS, or unused for IDLE_SECONDS."""
    now = time.monotonic()
    return now - chunk.opened >= ROTATE_SECONDS or now - chunk.last_used >= IDLE_SECONDS


def reservation(model: Model, rows: int) -> int:
    """The most a request of `rows` may cost before it runs, in micro-credits."""
    seconds = RESERVED_SECONDS if model.pricing_unit == PricingUnit.second else 0.0
    return catalog.price(model, images=rows, seconds=seconds)[1]


def _end(session: Session, chunk: _Chunk) -> int:
    """Capture what the chunk spent and release the rest; what it spent past what its hold
    captured (also when it was ended before: by this process, whose answer was lost, or by a
    sweep, which captured nothing)."""
    ledger.settle(session, user_id=chunk.user_id, source=chunk.source, cost_micros=chunk.used)
    session.execute(delete(PredictCreditChunk).where(PredictCreditChunk.source == chunk.source))
    capture = ledger.entry(session, chunk.source, LedgerEntryKind.capture)
    captured = -capture.amount_micros if capture is not None else 0
    return max(0, chunk.used - captured)


def release_stale_chunks(sessions: sessionmaker[Session], older_than: timedelta) -> int:
    """Release, uncharged, the /predict chunks that no process ended within `older_than` of
    their hold (their process died); how many. Each in a short transaction of its own, so a
    sweep never holds the write lock (SQLite) or several users' balances (PostgreSQL) long."""
    cutoff = utcnow() - older_than
    with sessions() as session:
        stale = session.execute(
            select(PredictCreditChunk.source, PredictCreditChunk.user_id)
            .where(PredictCreditChunk.created_at < cutoff)
            .order_by(PredictCreditChunk.created_at)
        ).all()
    for source, user_id in stale:
        with session_scope(sessions) as session:
            ledger.settle(session, user_id=user_id, source=source, cost_micros=0)
            session.execute(delete(PredictCreditChunk).where(PredictCreditChunk.source == source))
        log.warning("released predict credit chunk %s that no process ended", source)
    return len(stale)
