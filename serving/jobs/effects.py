"""What a job's transitions cause beyond its own row, decided in this one place.

- An attempt starts: a `status` event and the `start` webhook.
- A job ends — succeeded, failed or canceled; on a worker, through the API or by recovery —:
  its credit hold ends, captured up to the job's cost on success and released for the rest (all
  of it otherwise); on success its usage event, its `output` event and its `output` and `logs`
  webhooks; in every case its `status` and `done` events and its `completed` webhook.

Everything is written in the caller's transaction, together with the transition itself. Usage
(per job and kind), ledger entries (per job and kind) and webhooks (per job and event type) are
keyed by job id, so a job that runs or ends twice causes each once and moves credit once; its
events are written once because a transition by a stale claim changes nothing (fencing) and so
never reaches here. Only the queue's own modules call this
(serving.jobs.claim for starts, serving.jobs.transitions and, for a batch's successes at once,
serving.jobs.completion for ends); nothing else writes any of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from goshen.billing import ledger
from goshen.db.models import (
    CreditLedgerEntry,
    Job,
    JobStatus,
    LedgerEntryKind,
    Model,
    UsageEvent,
    utcnow,
)
from goshen.db.pending_rows import insert_rows
from goshen.ids import new_id
from goshen.storage import ArtifactStore
from serving.jobs.events import add_event
from serving.jobs.views import webhook_payload
from serving.webhooks import outbox
from serving.webhooks.payload import storable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """What a finished run produced, for the job row and its usage event."""

    output: dict[str, Any]
    run_seconds: float
    device: str
    peak_memory_bytes: int | None
    images: int
    compute_seconds: float
    quantity: float
    unit: str
    cost_micros: int


@dataclass(frozen=True)
class JobEffects:
    """Writes what transitions cause; webhook bodies link to `api_url` and sign `store` links."""

    store: ArtifactStore
    api_url: str

    def started(self, session: Session, jobs: Sequence[Job]) -> None:
        """Attempts of `jobs` (locked, flushed) began."""
        for job in jobs:
            add_event(session, job.id, "status", {"status": "running", "attempt": job.attempt})
            self._webhook(session, job, "start")

    def ended(self, session: Session, job: Job, completion: Completion | None = None) -> None:
        """`job` (locked, flushed) reached a terminal status; `completion` when it succeeded."""
        cost = completion.cost_micros if completion is not None else 0
        ledger.settle(session, user_id=job.user_id, job_id=job.id, cost_micros=cost)
        if completion is not None:
            self._meter(session, [(job, completion)])
        self._announce(session, job, completion)

    def ended_many(
        self,
        session: Session,
        succeeded: Sequence[tuple[Job, Completion]],
        holding: set[str] | None = None,
    ) -> None:
        """ended() for several jobs (locked, flushed) that succeeded, in fewer statements: one
        read of which of them still hold credit (`holding` when the caller read it already;
        only those are settled: settling a job with no open hold moves nothing) and one INSERT
        of their usage events. The caller has locked the balances of the users of the jobs that
        hold credit first (ledger.lock_balances); a hold that ended after `holding` was read is
        found ended by ledger.settle, which reads it again under that lock."""
        if holding is None:
            holding = holding_credit(session, [job.id for job, _ in succeeded])
        for job, completion in succeeded:
            if job.id in holding:
                ledger.settle(
                    session, user_id=job.user_id, job_id=job.id, cost_micros=completion.cost_micros
                )
        self._meter(session, succeeded)
        for job, completion in succeeded:
            self._announce(session, job, completion)

    def _announce(self, session: Session, job: Job, completion: Completion | None) -> None:
        """The end's events and webhooks."""
        status = JobStatus(job.status)
        if completion is not None:
            add_event(session, job.id, "output", completion.output)
        extra = {"error": job.error} if job.error else {}
        add_event(session, job.id, "status", {"status": status.value, **extra})
        add_event(session, job.id, "done", {"status": status.value, **extra})
        webhooks = ("output", "logs", "completed") if completion is not None else ("completed",)
        for event in webhooks:
            self._webhook(session, job, event)
        log.info("job %s ended %s (attempt %d)", job.id, status.value, job.attempt)

    def _meter(self, session: Session, succeeded: Sequence[tuple[Job, Completion]]) -> None:
        """One usage event per job, once however often it ends (unique per job and kind)."""
        if not succeeded:
            return
        rows = [
            {
                "id": new_id("use"),
                "created_at": utcnow(),
                "user_id": job.user_id,
                "api_key_id": job.api_key_id,
                "model_id": job.model_id,
                "job_id": job.id,
                "kind": "generation",
                "quantity": completion.quantity,
                "unit": completion.unit,
                "cost_micros": completion.cost_micros,
                "images": completion.images,
                "seconds": completion.compute_seconds,
            }
            for job, completion in succeeded
        ]
        insert_rows(session, UsageEvent, rows, skip_conflicts_on=("job_id", "kind"))

    def _webhook(self, session: Session, job: Job, event: str) -> None:
        """Queue the job's webhook event in the outbox, if it asked for one."""
        if not outbox.wants(job, event):
            return
        model = session.get(Model, job.model_id)
        assert model is not None, "catalog entries with jobs are never deleted (RESTRICT)"
        payload = webhook_payload(job, model.name, event, self.store, self.api_url)
        # Stored with the output's storage keys, not links: retries go on for hours, longer
        # than a link lives, so each attempt signs its own (serving.webhooks.payload).
        outbox.enqueue_event(session, job, event, storable(payload, job.output))


def holding_credit(session: Session, job_ids: Sequence[str]) -> set[str]:
    """Which of the jobs hold credit that was neither captured nor released yet. A job that
    holds none never will: its hold is placed in the transaction that queues it."""
    sources = {ledger.job_source(job_id): job_id for job_id in job_ids}
    entries = session.execute(
        select(CreditLedgerEntry.source, CreditLedgerEntry.kind).where(
            CreditLedgerEntry.source.in_(sources)
        )
    ).all()
    held = {source for source, kind in entries if kind == LedgerEntryKind.hold}
    ended = {source for source, kind in entries if kind != LedgerEntryKind.hold}
    return {sources[source] for source in held - ended}
