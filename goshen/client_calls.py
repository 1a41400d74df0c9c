"""How `Goshen` and `AsyncGoshen` share one definition of every call: an operation is a
generator that yields what it needs done (a `Call` to the API, a `Sleep`) and gets back each
call's JSON; the sync client runs it with httpx.Client, the async one with httpx.AsyncClient.
Imports only httpx and the standard library.

    @operation
    def get_job(self, job_id: str) -> Steps[Job]:
        return Job.of((yield Call("GET", f"/v1/jobs/{job_id}")))

`Goshen().get_job(id)` answers a Job; `await AsyncGoshen().get_job(id)` the same Job. A listing
(`@listing`) answers an iterator of every item, fetching pages as it goes: an async iterator on
`AsyncGoshen`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    BinaryIO,
    Concatenate,
    Generic,
    ParamSpec,
    Self,
    TypeVar,
    overload,
)

from goshen.client_progress import ProgressFile

if TYPE_CHECKING:
    from goshen.client_async import AsyncGoshen
    from goshen.client_sync import Goshen

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Upload:
    """A file sent as the `file` part of a multipart body, beside the `fields`; `on_progress`
    gets (bytes sent, bytes in all) as it goes."""

    path: str | os.PathLike[str]
    fields: Mapping[str, str] = field(default_factory=dict)
    on_progress: Callable[[int, int], None] | None = None


@dataclass(frozen=True)
class Call:
    """One request to the API; the operation gets back its JSON (None when empty), or the
    bytes at `url` for a signed link (`signed=True`, sent without the API key). An error answer
    raises its GoshenAPIError subclass in the operation."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    # Seconds to wait for the answer; None: the client's timeout.
    timeout: float | None = None
    # The route honours the Idempotency-Key in `headers`: a lost answer may be asked again.
    idempotent: bool = False
    upload: Upload | None = None
    signed: bool = False

    def request_options(self, default_timeout: Any) -> dict[str, Any]:
        """httpx's keyword arguments for this call (but the upload's `files` and `data`);
        `default_timeout`: the client's (an httpx.Timeout)."""
        options: dict[str, Any] = {}
        if self.params:
            options["params"] = {k: v for k, v in self.params.items() if v is not None}
        if self.json is not None:
            options["json"] = self.json
        if self.headers:
            options["headers"] = dict(self.headers)
        timeout = self.timeout if self.timeout is not None else default_timeout
        options["timeout"] = timeout
        return options


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds before going on (polling)."""

    seconds: float


Step = Call | Sleep
Steps = Generator[Step, Any, T]


@dataclass(frozen=True)
class Listing(Generic[T]):
    """A cursor-paginated list: GET `path` with `params`, each item parsed by `item`."""

    path: str
    item: Callable[[dict[str, Any]], T]
    params: Mapping[str, Any] = field(default_factory=dict)

    def page(self, cursor: str | None) -> Call:
        params = {**self.params, "cursor": cursor} if cursor else dict(self.params)
        return Call("GET", self.path, params=params)


@contextmanager
def open_upload(upload: Upload) -> Iterator[dict[str, Any]]:
    """httpx's `files` and `data` for the upload, its file open (and reporting progress) until
    the request was sent."""
    with open(upload.path, "rb") as file:
        body: BinaryIO | ProgressFile = file
        if upload.on_progress is not None:
            body = ProgressFile(file, upload.on_progress)
        name = os.path.basename(upload.path)
        yield {
            "files": {"file": (name, body, "application/octet-stream")},
            "data": dict(upload.fields),
        }


class SyncDriver:
    """A client that runs operations with blocking I/O."""

    def _drive(self, steps: Steps[T]) -> T:
        raise NotImplementedError

    def _list(self, listing: Listing[T]) -> Iterator[T]:
        cursor = None
        while True:
            page = self._drive(_one(listing.page(cursor)))
            yield from (listing.item(item) for item in page["data"])
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return


class AsyncDriver:
    """A client that runs operations with asyncio."""

    async def _drive(self, steps: Steps[T]) -> T:
        raise NotImplementedError

    async def _list(self, listing: Listing[T]) -> AsyncIterator[T]:
        cursor = None
        while True:
            page = await self._drive(_one(listing.page(cursor)))
            for item in page["data"]:
                yield listing.item(item)
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return


def _one(call: Call) -> Steps[Any]:
    return (yield call)


def read_object(path: str) -> Steps[dict[str, Any]]:
    """GET `path`: the JSON object it answers."""
    found: dict[str, Any] = yield Call("GET", path)
    return found


class operation(Generic[P, T]):  # a decorator, lower case like property
    """A method of both clients from one generator of steps (see the module's docstring)."""

    def __init__(self, steps: Callable[Concatenate[Any, P], Steps[T]]) -> None:
        self._steps = steps
        self.__doc__ = steps.__doc__  # help(Goshen.run) shows the operation's

    @overload
    def __get__(self, client: None, owner: type) -> Self: ...

    @overload
    def __get__(self, client: Goshen, owner: type) -> Callable[P, T]: ...

    @overload
    def __get__(self, client: AsyncGoshen, owner: type) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        steps = self._steps

        @functools.wraps(steps)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return client._drive(steps(client, *args, **kwargs))

        return bound


class listing(Generic[P, T]):  # a decorator, lower case like property
    """A method of both clients that lists every item: an iterator on `Goshen`, an async
    iterator on `AsyncGoshen`. The decorated function says what to list (a `Listing`)."""

    def __init__(self, describe: Callable[Concatenate[Any, P], Listing[T]]) -> None:
        self._describe = describe
        self.__doc__ = describe.__doc__

    @overload
    def __get__(self, client: None, owner: type) -> Self: ...

    @overload
    def __get__(self, client: Goshen, owner: type) -> Callable[P, Iterator[T]]: ...

    @overload
    def __get__(self, client: AsyncGoshen, owner: type) -> Callable[P, AsyncIterator[T]]: ...

    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        describe = self._describe

        @functools.wraps(describe)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return client._list(describe(client, *args, **kwargs))

        return bound
