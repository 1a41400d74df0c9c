"""Goshen's API under a client mix at fixed rates, for locust (bench/load/run.py sets it up).

    locust -f bench/load/locustfile.py --headless --host http://127.0.0.1:8000 --run-time 30s \\
        --keys-file keys.txt --predict-model digits-classifier --generate-model digits-diffusion \\
        --predict-rate 20 --generate-rate 4 --results results.json

Three kinds of client, each user with an API key of its own (the keys file's lines, in turn), as
the README documents the routes:

- Predictor: `POST /v1/models/{name}/predict` with 1 to 8 rows of the digits classifier's 64
  features; `--predict-rate` requests a second in all.
- Poller: `POST /v1/generate` (with an `Idempotency-Key`), then `GET /v1/jobs/{id}` every
  POLL_SECONDS until the job ends.
- Streamer: `POST /v1/generate`, then `GET /v1/jobs/{id}/events` until the stream ends after
  `done`.

Pollers and streamers each submit half of `--generate-rate` jobs a second. Every user is paced
with `constant_throughput` (one task per period, whatever its answers took, unless a task takes
longer than its period), so the rates hold while the API keeps up; the users needed for a rate
are spawned as `fixed_count`s. Besides locust's own statistics, every request's time and status
are kept by route template and written to `--results` when the run ends: what run.py tabulates.
A stream's time is to its headers (as a client sees it open); the rows "job: submit to done"
time a whole job, from its submission to the poll or the event that showed it ended.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task
from locust.env import Environment

PREDICT = "POST /v1/models/{name}/predict"
GENERATE = "POST /v1/generate"
POLL = "GET /v1/jobs/{id}"
EVENTS = "GET /v1/jobs/{id}/events"
POLLED_JOB = "job: submit to done (polled)"
STREAMED_JOB = "job: submit to done (streamed)"
TERMINAL = {"succeeded", "failed", "canceled"}
POLL_SECONDS = 0.5
JOB_TIMEOUT_SECONDS = 120.0
PREDICT_RATE_PER_USER = 2.0  # a predictor's requests a second
JOBS_PER_USER_SECOND = 0.5  # a poller's or streamer's jobs a second
FEATURES = 64

_keys: Iterator[str] = iter(())
_answers: defaultdict[str, list[tuple[float, int, bool]]] = defaultdict(list)
_run = {"started": 0.0, "stopped": 0.0}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--keys-file", default="keys.txt", help="API keys, one a line")
    parser.add_argument("--predict-model", default="digits-classifier")
    parser.add_argument("--generate-model", default="digits-diffusion")
    parser.add_argument("--predict-rate", type=float, default=10.0, help="requests a second")
    parser.add_argument("--generate-rate", type=float, default=2.0, help="jobs a second")
    parser.add_argument("--results", default="", help="where to write every route's answers")


@events.init.add_listener
def _prepare(environment: Environment, **_: Any) -> None:
    """Read the keys and size each kind of client for its rate."""
    global _keys
    options = environment.parsed_options
    if options is None:  # locust's own tests of a locustfile run without options
        return
    keys = Path(options.keys_file).read_text().split()
    if not keys:
        raise SystemExit(f"{options.keys_file} holds no API keys")
    _keys = itertools.cycle(keys)
    Predictor.size(options.predict_rate, PREDICT_RATE_PER_USER)
    Poller.size(options.generate_rate / 2, JOBS_PER_USER_SECOND)
    Streamer.size(options.generate_rate / 2, JOBS_PER_USER_SECOND)
    # Every user the rates need, started within the first second (headless runs read these).
    options.num_users = sum(kind.fixed_count for kind in (Predictor, Poller, Streamer))
    options.spawn_rate = options.num_users


@events.request.add_listener
def _record(name: str, response_time: float, response: Any, exception: Any, **_: Any) -> None:
    status = getattr(response, "status_code", None) or 0
    _answers[name].append((response_time, status, exception is not None))


@events.test_start.add_listener
def _started(**_: Any) -> None:
    _run["started"] = time.monotonic()


@events.test_stop.add_listener
def _stopped(environment: Environment, **_: Any) -> None:
    _run["stopped"] = time.monotonic()
    options = environment.parsed_options
    if options is not None and options.results:
        Path(options.results).write_text(json.dumps(summary(), indent=2))


def summary() -> dict[str, dict[str, float]]:
    """Per route template: requests, requests a second, p50 and p99 in ms, errors (no answer,
    an answer of 400 or more, a job that did not succeed) and 5xx answers."""
    seconds = max(_run["stopped"] - _run["started"], 1e-9)
    routes = {}
    for name, answers in sorted(_answers.items()):
        times = sorted(took for took, _, _ in answers)
        statuses = Counter(status for _, status, _ in answers)
        routes[name] = {
            "requests": len(answers),
            "per_second": len(answers) / seconds,
            "p50_ms": times[int(0.50 * (len(times) - 1))],
            "p99_ms": times[int(0.99 * (len(times) - 1))],
            "errors": sum(failed for _, _, failed in answers),
            "server_errors": sum(n for status, n in statuses.items() if status >= 500),
            "statuses": {str(status): n for status, n in sorted(statuses.items())},
        }
    return routes


class Client(FastHttpUser):
    """A client with an API key of its own; `size` sets how many run and how often each acts."""

    abstract = True
    per_user = 1.0  # tasks a second, set by size()

    @classmethod
    def size(cls, rate: float, per_user: float) -> None:
        """Enough users for `rate` tasks a second at no more than `per_user` each."""
        cls.fixed_count = math.ceil(rate / per_user) if rate > 0 else 0
        cls.per_user = rate / cls.fixed_count if cls.fixed_count else per_user

    def wait_time(self) -> float:
        return constant_throughput(self.per_user)(self)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {next(_keys)}"}
        self.options = self.environment.parsed_options

    def submit(self) -> tuple[str, float] | None:
        """Queue one job; its id and when it was sent, or None when it was refused."""
        body = {
            "model": self.options.generate_model,
            "input": {"digit": random.randrange(10), "num_images": random.randint(1, 4)},
        }
        headers = {**self.headers, "Idempotency-Key": str(uuid.uuid4())}
        sent = time.perf_counter()
        response = self.client.post("/v1/generate", json=body, headers=headers, name=GENERATE)
        if response.status_code != 201:
            return None
        return response.json()["id"], sent

    def job_ended(self, name: str, sent: float, status: str | None) -> None:
        """One sample for the whole job, failed unless it succeeded."""
        failed = None if status == "succeeded" else RuntimeError(f"the job ended {status}")
        events.request.fire(
            request_type="JOB",
            name=name,
            response_time=(time.perf_counter() - sent) * 1000,
            response_length=0,
            response=None,
            exception=failed,
            context={},
        )


class Predictor(Client):
    @task
    def predict(self) -> None:
        rows = [[random.random() for _ in range(FEATURES)] for _ in range(random.randint(1, 8))]
        self.client.post(
            f"/v1/models/{self.options.predict_model}/predict",
            json={"inputs": {"features": rows}},
            headers=self.headers,
            name=PREDICT,
        )


class Poller(Client):
    @task
    def generate_and_poll(self) -> None:
        submitted = self.submit()
        if submitted is None:
            return
        job_id, sent = submitted
        status = None
        while time.perf_counter() - sent < JOB_TIMEOUT_SECONDS:
            time.sleep(POLL_SECONDS)
            response = self.client.get(f"/v1/jobs/{job_id}", headers=self.headers, name=POLL)
            if response.status_code == 200 and (status := response.json()["status"]) in TERMINAL:
                break
        self.job_ended(POLLED_JOB, sent, status)


class Streamer(Client):
    @task
    def generate_and_stream(self) -> None:
        submitted = self.submit()
        if submitted is None:
            return
        job_id, sent = submitted
        headers = {**self.headers, "Accept": "text/event-stream"}
        with self.client.get(
            f"/v1/jobs/{job_id}/events",
            headers=headers,
            name=EVENTS,
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                return  # counted as failed by locust
            stream = "".join(response.iter_content(chunk_size=4096))
            if "\nevent: done\n" not in stream:
                response.failure(f"the stream ended without `done`: {stream[-200:]!r}")
                return
        status = json.loads(stream.rpartition("event: done\ndata: ")[2].split("\n")[0])
        self.job_ended(STREAMED_JOB, sent, status.get("status"))
