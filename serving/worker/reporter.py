"""Beside a running batch: progress per step, log lines, lease renewals, and early ends.

A reporter thread writes each step's progress and the log lines, renews the leases and reads back
cancellations, so the sampling loop never waits on the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from sqlalchemy.orm import Session

from goshen.billing import ledger
from goshen.db import session_scope
from serving.jobs import lease, transitions
from serving.jobs.claim import Claim
from serving.jobs.events import Entry
from serving.worker.context import WorkerContext, WorkerStopping
from serving.worker.outages import Outage

log = logging.getLogger(__name__)
FLUSH_SECONDS = 0.1

STOPPED = "the worker stopped before the batch finished"


class BatchReporter:
    """Beside a running batch: progress per step, log lines, lease renewals, and the jobs that
    stop early (canceled, timed out, or released when the worker's drain period ends), which it
    ends at once, even while the batch is inside a long step."""

    def __init__(
        self, context: WorkerContext, claims: Sequence[Claim], waiting: Sequence[Claim] = ()
    ) -> None:
        self.context = context
        self.claims = list(claims)
        # Jobs of the same claim waiting on this batch (run and not ended yet, or not started:
        # serving.worker.runner.run_batches): their leases are renewed with the batch's own.
        self.waiting = list(waiting)
        timeout = context.settings.job_timeout_seconds
        started = time.monotonic()
        self.deadlines = [started + (claim.timeout_seconds or timeout) for claim in claims]
        # index -> "canceled" | "timeout" | "released" | "lost" (another worker holds it now)
        self.stopped: dict[int, str] = {}
        self.ended: set[int] = set()  # jobs already ended here (or lost): nothing more to write
        self._entries: list[Entry] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._last_heartbeat = started
        self._thread = threading.Thread(target=self._run, name="batch-reporter", daemon=True)

    def __enter__(self) -> BatchReporter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def log(self, line: str) -> None:
        """A log line for every job of the batch."""
        with self._lock:
            self._entries.append(("log", line))

    def on_step(self, step: int, total: int) -> AbstractSet[int]:
        """The generator's step callback: queue the step's progress, answer whom to stop."""
        if self.context.draining_over():
            raise WorkerStopping("the worker's drain period ended")
        with self._lock:
            self._entries.append(("progress", (step, total)))
        self._check_deadlines()
        with self._lock:
            return frozenset(self.stopped)

    def take(self) -> list[Entry]:
        """What is waiting to be reported, now the caller's to write."""
        with self._lock:
            entries, self._entries = self._entries, []
        return entries

    def unfinished(self) -> list[int]:
        """Jobs of the batch not yet ended here."""
        with self._lock:
            return [index for index in range(len(self.claims)) if index not in self.ended]

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            for index, deadline in enumerate(self.deadlines):
                if now > deadline:
                    self.stopped.setdefault(index, "timeout")

    def _run(self) -> None:
        while not self._done.wait(FLUSH_SECONDS):
            try:
                self._tick()
            except Exception:
                # A database hiccup must not kill the batch; the lease has slack for retries.
                log.exception("batch reporter could not write; retrying")

    def _tick(self) -> None:
        self._check_deadlines()
        if self.context.draining_over():
            with self._lock:
                for index in range(len(self.claims)):
                    self.stopped.setdefault(index, "released")
        entries, active, to_end = self._snapshot()
        with session_scope(self.context.factory) as session:
            if to_end:  # balances before jobs, as every transaction that ends jobs takes them
                ledger.lock_balances(session, (self.claims[i].user_id for i, _ in to_end))
            for index in active:
                self._note(index, lease.report(session, self.claims[index], entries))
            for index, reason in to_end:
                lease.report(session, self.claims[index], entries)
                end_early(self.context, session, self.claims[index], reason)
        # Ended only once committed: after a failed tick the next one (or the batch's last
        # transaction) ends them, with the entries that came since.
        with self._lock:
            self.ended.update(index for index, _ in to_end)
        if time.monotonic() - self._last_heartbeat >= self.context.settings.job_lease_seconds / 3:
            self._heartbeat()

    def _snapshot(self) -> tuple[list[Entry], list[int], list[tuple[int, str]]]:
        """The entries to write, the jobs that go on and the jobs to end, taken together.

        Under one lock, so that each job is in exactly one of the two lists and gets the entries
        at most once: a job the sampling thread stops meanwhile (its deadline) or that this tick
        finds canceled is ended by the next tick with the entries that came after these, and its
        progress never repeats or goes back. A tick that fails drops its entries rather than
        risk writing them twice: a lost step is made good by the next one, a repeated one would
        run backwards."""
        with self._lock:
            entries, self._entries = self._entries, []
            to_end = [
                (index, reason)
                for index, reason in self.stopped.items()
                if index not in self.ended and reason != "lost"
            ]
            active = [index for index in range(len(self.claims)) if index not in self.stopped]
        return entries, active, to_end

    def _heartbeat(self) -> None:
        lease_seconds = self.context.settings.job_lease_seconds
        with session_scope(self.context.factory) as session:
            for index in self.unfinished():
                self._note(index, lease.heartbeat(session, self.claims[index], lease_seconds))
            for claim in self.waiting:  # one taken over meanwhile is fenced out at its end
                lease.heartbeat(session, claim, lease_seconds)
        self._last_heartbeat = time.monotonic()

    def _note(self, index: int, state: lease.LeaseState) -> None:
        with self._lock:
            if not state.held:
                self.stopped[index] = "lost"
                self.ended.add(index)
            elif state.cancel_requested:
                self.stopped.setdefault(index, "canceled")


def end_early(context: WorkerContext, session: Session, claim: Claim, reason: str) -> None:
    """End a job that stopped before its batch finished: canceled, timed out or released."""
    if reason == "canceled":
        transitions.confirm_canceled(session, claim, context.effects)
    elif reason == "timeout":
        limit = claim.timeout_seconds or context.settings.job_timeout_seconds
        error = f"timed out after {limit:.0f} s (GOSHEN_JOB_TIMEOUT_SECONDS)"
        fail_attempt(context, session, claim, error, retryable=False)
    else:
        transitions.release(session, claim, STOPPED, context.effects)


def fail_attempt(
    context: WorkerContext,
    session: Session,
    claim: Claim,
    error: str,
    *,
    retryable: bool,
    detail: str | None = None,
) -> None:
    """End the attempt with `error`, retried with the worker's backoff when `retryable`."""
    transitions.fail(
        session,
        claim,
        error,
        context.effects,
        retryable=retryable,
        retry_base_seconds=context.settings.job_retry_base_seconds,
        detail=detail,
    )


def wait_out(context: WorkerContext, session: Session, claim: Claim, outage: Outage) -> None:
    """End the attempt because `outage`'s dependency is down: the job waits it out in the queue,
    its attempt not spent (a bounded number of times: serving.jobs.retry)."""
    transitions.retry_after_outage(
        session,
        claim,
        outage.error,
        context.effects,
        retry_base_seconds=context.settings.job_retry_base_seconds,
        detail=outage.detail,
    )
