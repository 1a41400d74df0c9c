"""The API process's open event streams, and the news that ends them early.

Streams (`/v1/jobs/{id}/events`, `/v1/training/{id}/logs`) can stay open for hours, so a server
that waits for them to finish never stops. When the server begins to stop (serving.server, on
SIGTERM), `StreamHub.begin_shutdown()` wakes every open stream; each sends one `shutdown` event
and closes, and the client reconnects with `Last-Event-ID` to another API process. A stream
whose key is revoked, or whose user is disabled, while it is open ends with an `unauthorized`
event within STREAM_KEY_CHECK_SECONDS (`KeyWatch`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from goshen import accounts
from goshen.accounts import Principal
from goshen.db.models import User
from serving.http.principal_cache import PrincipalCache

SHUTDOWN_EVENT = "shutdown"
SHUTDOWN_DETAIL = "the API process is shutting down: reconnect with Last-Event-ID to resume"
UNAUTHORIZED_EVENT = "unauthorized"
KEY_REVOKED = "the API key was revoked: this stream ends; open it again with a valid key"
ACCOUNT_DISABLED = "the account is disabled: this stream ends; its keys no longer work"
# A cached key costs no read to check; revocations reach the cache at once (principal_cache).
STREAM_KEY_CHECK_SECONDS = 2.0

log = logging.getLogger(__name__)


class StreamHub:
    """The open streams of one app. Every method runs on the app's event loop thread."""

    def __init__(self) -> None:
        self._closing = False
        self._wakers: set[Callable[[], None]] = set()
        self.keys = KeyWatch()  # ends the streams of keys revoked while they are open

    @property
    def closing(self) -> bool:
        """Whether the server is stopping: a stream that sees this says goodbye and ends."""
        return self._closing

    @property
    def open_streams(self) -> int:
        return len(self._wakers)

    def begin_shutdown(self) -> None:
        """Tell every open stream to end now (and every stream opened later to end at once)."""
        self._closing = True
        for wake in list(self._wakers):
            wake()

    @contextmanager
    def open(self, wake: Callable[[], None]) -> Iterator[None]:
        """Register a stream for the block; `wake()` must make it look at `closing` soon."""
        self._wakers.add(wake)
        try:
            yield
        finally:
            self._wakers.discard(wake)


def shutdown_event() -> str:
    """The server-sent event a stream ends with when the server stops (it carries no id: the
    client resumes after the last event it received)."""
    data = json.dumps({"reason": "shutdown", "detail": SHUTDOWN_DETAIL})
    return f"event: {SHUTDOWN_EVENT}\ndata: {data}\n\n"


class KeyCheck:
    """Whether the key a stream was opened with still works: the same path as a request's
    check (serving.http.dependencies), the principal cache, which learns revocations at once,
    else one read. `refused` says why it stopped working, once it has."""

    def __init__(
        self,
        principals: PrincipalCache,
        reads: sessionmaker[Session],
        plaintext: str,
        principal: Principal,
    ) -> None:
        self._principals = principals
        self._reads = reads
        self.plaintext = plaintext
        self._user_id = principal.user.id
        self.refused: str | None = None

    async def recheck(self) -> str | None:
        """Why the key no longer works (None: it does)."""
        if self._principals.get(self.plaintext) is not None:
            return None
        return await run_in_threadpool(self._read)

    def _read(self) -> str | None:
        generation = self._principals.generation
        with self._reads() as session:
            principal = accounts.find_principal(session, self.plaintext)
            if principal is not None:
                self._principals.put(self.plaintext, principal, generation)
                return None
            user = session.get(User, self._user_id)
            if user is None or user.disabled_at is not None:
                return ACCOUNT_DISABLED
            return KEY_REVOKED


class KeyWatch:
    """Every STREAM_KEY_CHECK_SECONDS, each key that open streams were opened with is checked
    once, however many streams share it, and the streams of a key that stopped working are
    woken to end. One task on the event loop, running while streams are open: idle streams
    themselves never wake to check."""

    def __init__(self) -> None:
        self._streams: dict[KeyCheck, Callable[[], None]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def watching(self, key: KeyCheck, wake: Callable[[], None]) -> Iterator[None]:
        self._streams[key] = wake
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())
        try:
            yield
        finally:
            self._streams.pop(key, None)

    async def _run(self) -> None:
        while self._streams:
            await asyncio.sleep(STREAM_KEY_CHECK_SECONDS)
            await self.check_all()

    async def check_all(self) -> None:
        by_key: dict[str, list[KeyCheck]] = {}
        for key in list(self._streams):
            by_key.setdefault(key.plaintext, []).append(key)
        for keys in by_key.values():
            try:
                refused = await keys[0].recheck()
            except Exception:  # the database is down: the streams' own reads will say so
                log.warning("could not check an open stream's API key", exc_info=True)
                continue
            for key in keys if refused is not None else ():
                key.refused = refused
                if (wake := self._streams.get(key)) is not None:
                    wake()


class StreamGuard:
    """What ends an open stream early, asked by the stream whenever it wakes: the server
    stopping (`hub`) and its key stopping to work (`key`, checked by the hub's KeyWatch)."""

    def __init__(self, hub: StreamHub, key: KeyCheck) -> None:
        self.hub = hub
        self.key = key

    @contextmanager
    def open(self, wake: Callable[[], None]) -> Iterator[None]:
        """Register the stream; `wake()` must make it call `final_event` soon."""
        with self.hub.open(wake), self.hub.keys.watching(self.key, wake):
            yield

    def final_event(self) -> str | None:
        """The event to end the stream with now, if it must end."""
        if self.hub.closing:
            return shutdown_event()
        if self.key.refused is not None:
            return unauthorized_event(self.key.refused)
        return None


def bearer_key(request: Request) -> str:
    """The API key the request authenticated with (its dependencies have checked it is there)."""
    return request.headers.get("authorization", "").partition(" ")[2].strip()


def unauthorized_event(detail: str) -> str:
    """The server-sent event a stream ends with when its key stops working (no id: the stream
    has nothing more to resume)."""
    data = json.dumps({"reason": UNAUTHORIZED_EVENT, "status": 401, "detail": detail})
    return f"event: {UNAUTHORIZED_EVENT}\ndata: {data}\n\n"
