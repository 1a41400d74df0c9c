"""One account's requests in progress are bounded (GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT):
past the bound it gets 429 with `Retry-After` at once, while other accounts, /healthz and
/readyz keep answering; event streams and long polls hold no slot while they wait.

Every test runs against a real uvicorn; submissions are held in progress for real, blocked on
their account's user row, which the test locks on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import Model, User
from goshen.errors import RateLimitedError
from serving.http.inflight import AccountsInFlight, TurnsPerAccount
from tests.fixtures.accounts import Account
from tests.fixtures.servers import Served, serve_app

CAP = 2
# Generous: answers are expected in milliseconds; the bound only keeps a hang from lasting.
ANSWER_SECONDS = 10.0


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    capped = Settings(
        **{**settings.model_dump(), "max_requests_in_flight_per_account": CAP, "_env_file": None}
    )
    with serve_app(capped) as running:
        yield running


@pytest.fixture
def api(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=ANSWER_SECONDS) as client:
        yield client


@contextmanager
def user_row_locked(sessions: sessionmaker[Session], user_id: str) -> Iterator[None]:
    """Hold the user's row lock, which every submission of the account waits for (PostgreSQL)."""
    with sessions() as session:
        session.execute(select(User.id).where(User.id == user_id).with_for_update())
        yield
        session.rollback()


def lock_waiters(sessions: sessionmaker[Session]) -> int:
    """How many connections wait for a row lock."""
    with sessions() as session:
        waiting = session.scalar(
            select(func.count())
            .select_from(text("pg_stat_activity"))
            .where(text("datname = current_database() AND wait_event_type = 'Lock'"))
        )
        return waiting or 0


def wait_for_submissions_in_progress(
    served: Served, sessions: sessionmaker[Session], account: Account
) -> None:
    """Until the account has CAP requests in progress: the first submission waits for the row
    lock, the others for their turn after it (read from the API, which runs in this process)."""
    deadline = time.monotonic() + 30
    in_flight = served.app.state.api.lanes.in_flight
    while lock_waiters(sessions) < 1 or in_flight.count(account.user_id) != CAP:
        assert time.monotonic() < deadline, "the submissions did not get under way"
        time.sleep(0.05)


def unrefused(call: Callable[[], httpx.Response]) -> httpx.Response:
    """The first answer that is not a 429, as a client that honours Retry-After would get."""
    answer = call()
    while answer.status_code == 429:
        time.sleep(0.1)
        answer = call()
    return answer


def submit(api: httpx.Client, account: Account, model: Model) -> httpx.Response:
    body = {"model": model.name, "input": {"digit": 3}}
    return api.post("/v1/generate", json=body, headers=account.headers)


def assert_in_flight_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["content-type"] == "application/problem+json"
    assert "GOSHEN_MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT" in answer.json()["detail"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_account_past_its_requests_in_flight_gets_429_while_others_are_served(
    served: Served,
    api: httpx.Client,
    sessions: sessionmaker[Session],
    make_account: Callable[..., Account],
    catalog_model: Model,
) -> None:
    burst, other = make_account(), make_account()
    with ThreadPoolExecutor(CAP) as pool, user_row_locked(sessions, burst.user_id):
        held: list[Future[httpx.Response]] = [
            pool.submit(submit, api, burst, catalog_model) for _ in range(CAP)
        ]
        wait_for_submissions_in_progress(served, sessions, burst)
        assert lock_waiters(sessions) == 1  # the others wait on the event loop, with no thread

        assert_in_flight_refused(submit(api, burst, catalog_model))
        assert_in_flight_refused(api.get("/v1/jobs", headers=burst.headers))
        assert api.get("/v1/jobs", headers=other.headers).status_code == 200
        assert submit(api, other, catalog_model).status_code == 201
        assert api.get("/healthz").status_code == 200
        assert api.get("/readyz").status_code in (200, 503)  # it answers; what it says is moot
        assert not any(submission.done() for submission in held)

    assert [submission.result().status_code for submission in held] == [201] * CAP
    listed = api.get("/v1/jobs", headers=burst.headers)
    assert listed.status_code == 200 and len(listed.json()["data"]) == CAP
    assert submit(api, burst, catalog_model).status_code == 201


def test_event_streams_and_long_polls_hold_no_slot_while_they_wait(
    api: httpx.Client, developer: Account, catalog_model: Model
) -> None:
    job = submit(api, developer, catalog_model).json()
    events = f"/v1/jobs/{job['id']}/events"
    waiting = {"Prefer": "wait=60"} | developer.headers  # far longer than the test takes
    with (
        api.stream("GET", events, headers=developer.headers) as one,
        api.stream("GET", events, headers=developer.headers) as two,
        ThreadPoolExecutor(CAP) as pool,
    ):
        assert one.status_code == two.status_code == 200
        long_poll = functools.partial(api.get, f"/v1/jobs/{job['id']}", headers=waiting, timeout=90)
        polls = [pool.submit(unrefused, long_poll) for _ in range(CAP)]
        # The queued job does not end until canceled below (no worker): the streams and the
        # polls stay open; each poll holds a slot only while it reads the job, then waits
        # without one.
        listed = api.get("/v1/jobs", headers=developer.headers)
        while listed.status_code == 429 and not any(poll.done() for poll in polls):
            time.sleep(0.1)
            listed = api.get("/v1/jobs", headers=developer.headers)
        assert listed.status_code == 200
        assert not any(poll.done() for poll in polls), [poll.result() for poll in polls]
        assert submit(api, developer, catalog_model).status_code == 201
        # The job ends: the polls answer with it.
        assert (
            unrefused(
                lambda: api.post(f"/v1/jobs/{job['id']}/cancel", headers=developer.headers)
            ).status_code
            == 200
        )
        assert [poll.result().json()["status"] for poll in polls] == ["canceled"] * CAP


def test_a_slot_is_given_back_once_and_the_count_forgets_idle_accounts() -> None:
    in_flight = AccountsInFlight(limit=1)
    release = in_flight.enter("user-a")
    with pytest.raises(RateLimitedError) as refused:
        in_flight.enter("user-a")
    assert refused.value.retry_after_seconds == 1
    in_flight.enter("user-b")()
    release()
    release()
    assert in_flight.count("user-a") == 0
    in_flight.enter("user-a")()
    assert in_flight.count("user-a") == 0


def test_an_accounts_submissions_take_turns_while_other_accounts_go_at_once() -> None:
    async def scenario() -> list[str]:
        turns = TurnsPerAccount()
        order: list[str] = []
        first_in = asyncio.Event()

        async def hold(user_id: str, name: str, release: asyncio.Event) -> None:
            async with turns.turn(user_id):
                order.append(f"{name} in")
                first_in.set()
                await release.wait()
                order.append(f"{name} out")

        release = asyncio.Event()
        first = asyncio.create_task(hold("user-a", "a1", release))
        await first_in.wait()
        second = asyncio.create_task(hold("user-a", "a2", asyncio.Event()))
        other = asyncio.create_task(hold("user-b", "b1", asyncio.Event()))
        await asyncio.sleep(0.05)
        order.append("release a1")
        release.set()
        await first
        await asyncio.sleep(0.05)
        for task in (second, other):
            task.cancel()
        await asyncio.gather(second, other, return_exceptions=True)
        assert not turns._locks  # an account with nothing waiting is forgotten
        return order

    assert asyncio.run(scenario()) == ["a1 in", "b1 in", "release a1", "a1 out", "a2 in"]
