"""Clients submitting generation jobs through the API processes, as a careful client does.

Every request carries an Idempotency-Key and is sent again with the same key (to either API
process) until it gets an answer that settles it: 201 (accepted: the job's id) or 402 (refused
for credit). A lost connection, a 503 while the database restarts, a 429: sent again. So each key
ends with at most one job, and the record says which keys made which job.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fixtures.accounts import Account

RETRY_SECONDS = 0.3


@dataclass(frozen=True)
class Submission:
    key: str
    account: Account
    body: dict[str, Any]


@dataclass
class Traffic:
    """What the clients were told: accepted job ids and refused keys, by idempotency key."""

    accepted: dict[str, str] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)
    retried: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def settle(self, submission: Submission, answer: httpx.Response) -> bool:
        """Record an answer; whether it settles the submission."""
        with self._lock:
            if answer.status_code == 201:
                self.accepted[submission.key] = answer.json()["id"]
                return True
            if answer.status_code == 402:
                self.refused.add(submission.key)
                return True
            if answer.status_code in (429, 503) or answer.status_code >= 500:
                self.retried[str(answer.status_code)] += 1
                return False
            self.unexpected.append(f"{answer.status_code} {answer.text[:300]}")
            return True


def submit_all(
    submissions: list[Submission],
    api_urls: list[str],
    threads: int,
    timeout: float,
    halt: threading.Event,
) -> Traffic:
    """Send every submission from `threads` clients, spread over `api_urls`; all settled or
    given up (recorded as unexpected) within `timeout` seconds, or when `halt` is set."""
    traffic = Traffic()
    todo: queue.Queue[Submission] = queue.Queue()
    for submission in submissions:
        todo.put(submission)
    deadline = time.monotonic() + timeout

    def client(number: int) -> None:
        with httpx.Client(timeout=30) as http:
            turn = number
            while True:
                try:
                    submission = todo.get_nowait()
                except queue.Empty:
                    return
                while True:
                    turn += 1
                    url = api_urls[turn % len(api_urls)]
                    try:
                        answer = http.post(
                            f"{url}/v1/generate",
                            json=submission.body,
                            headers={
                                **submission.account.headers,
                                "Idempotency-Key": submission.key,
                            },
                        )
                    except httpx.TransportError as exc:
                        with traffic._lock:
                            traffic.retried[type(exc).__name__] += 1
                    else:
                        if traffic.settle(submission, answer):
                            break
                    if time.monotonic() > deadline or halt.is_set():
                        with traffic._lock:
                            traffic.unexpected.append(f"{submission.key}: never settled")
                        break
                    time.sleep(RETRY_SECONDS)

    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=max(1.0, deadline - time.monotonic() + 60))
    return traffic
