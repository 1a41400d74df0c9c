"""What must hold after a chaos run, read from the database and the receiver's record.

`check` returns every violated invariant with its evidence (not only the first), and the run's
figures. The invariants: the jobs are exactly the accepted ones, all ended; none ran to
completion twice (one `done` event, at most one `output` event and one usage event); every
succeeded job was captured once for its cost and every other job's hold released once; no hold is
left open; each account's ledger sums to its balance, which never went below zero; every webhook
event the jobs caused was delivered and received, under one `webhook-id` per (job, event type),
with only same-id redeliveries and a valid signature on every one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.db.models import (
    CreditBalance,
    CreditLedgerEntry,
    DeliveryStatus,
    Job,
    JobEvent,
    JobStatus,
    LedgerEntryKind,
    UsageEvent,
    User,
    WebhookDelivery,
)
from goshen.webhooks import WebhookVerificationError, verify
from tests.chaos.receiver import Receipt
from tests.chaos.traffic import Traffic

SUCCESS_EVENTS = {"start", "output", "logs", "completed"}
# Signatures are checked after the run, which may be long; replays are not what this checks.
SIGNATURE_TOLERANCE_SECONDS = 24 * 3600


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def expect(self, holds: bool, what: str, evidence: object) -> None:
        if not holds:
            self.violations.append(f"{what}: {evidence}")


def check(
    sessions: sessionmaker[Session],
    traffic: Traffic,
    receipts: list[Receipt],
    granted: dict[str, int],
) -> Verdict:
    """Every invariant of the module over the finished run; `granted`: credit by user id."""
    verdict = Verdict()
    with sessions() as session:
        jobs = {job.id: job for job in session.scalars(select(Job))}
        _check_jobs(verdict, jobs, traffic)
        _check_completions(verdict, session, jobs)
        _check_credit(verdict, session, jobs, granted)
        _check_webhooks(verdict, session, jobs, receipts)
    return verdict


def _check_jobs(verdict: Verdict, jobs: dict[str, Job], traffic: Traffic) -> None:
    accepted = set(traffic.accepted.values())
    verdict.expect(not traffic.unexpected, "clients got unexpected answers", traffic.unexpected[:5])
    verdict.expect(set(jobs) - accepted == set(), "jobs nobody was told of", set(jobs) - accepted)
    verdict.expect(accepted - set(jobs) == set(), "accepted jobs lost", accepted - set(jobs))
    made = {job.idempotency_key for job in jobs.values()}
    verdict.expect(not made & traffic.refused, "refused keys made jobs", made & traffic.refused)
    statuses = Counter(str(job.status) for job in jobs.values())
    unended = [
        job.id for job in jobs.values() if job.status in (JobStatus.queued, JobStatus.running)
    ]
    verdict.expect(not unended, "accepted jobs never ended", unended[:10])
    # A failure is acceptable only as the queue's answer to a job that lost every attempt.
    unexplained = [
        (job.id, job.attempt, job.error)
        for job in jobs.values()
        if job.status != JobStatus.succeeded and job.attempt < job.max_attempts
    ]
    verdict.expect(not unexplained, "jobs ended without succeeding or exhausting", unexplained[:5])
    verdict.figures.update(
        submitted=len(traffic.accepted) + len(traffic.refused),
        accepted=len(traffic.accepted),
        refused_for_credit=len(traffic.refused),
        client_retries=dict(traffic.retried),
        statuses=dict(statuses),
        jobs_run_more_than_once=sum(1 for job in jobs.values() if job.attempt > 1),
        extra_attempts=sum(max(0, job.attempt - 1) for job in jobs.values()),
    )


def _check_completions(verdict: Verdict, session: Session, jobs: dict[str, Job]) -> None:
    events = Counter(
        (job_id, kind)
        for job_id, kind in session.execute(select(JobEvent.job_id, JobEvent.type)).all()
    )
    usage = dict(
        session.execute(select(UsageEvent.job_id, func.count()).group_by(UsageEvent.job_id)).all()
    )
    twice, no_done, usage_wrong = [], [], []
    for job in jobs.values():
        succeeded = job.status == JobStatus.succeeded
        if events[(job.id, "done")] != 1:
            no_done.append((job.id, events[(job.id, "done")]))
        if events[(job.id, "output")] != int(succeeded):
            twice.append((job.id, str(job.status), events[(job.id, "output")]))
        if usage.get(job.id, 0) != int(succeeded):
            usage_wrong.append((job.id, str(job.status), usage.get(job.id, 0)))
    verdict.expect(not no_done, "jobs without exactly one done event", no_done[:5])
    verdict.expect(not twice, "jobs completed other than once (output events)", twice[:5])
    verdict.expect(not usage_wrong, "usage events other than one per success", usage_wrong[:5])


def _check_credit(
    verdict: Verdict, session: Session, jobs: dict[str, Job], granted: dict[str, int]
) -> None:
    entries = session.scalars(
        select(CreditLedgerEntry).where(CreditLedgerEntry.user_id.in_(list(granted)))
    ).all()
    by_job: dict[str, Counter[LedgerEntryKind]] = defaultdict(Counter)
    amounts: dict[tuple[str, LedgerEntryKind], int] = defaultdict(int)
    for entry in entries:
        if entry.job_id is not None:
            by_job[entry.job_id][entry.kind] += 1
            amounts[(entry.job_id, entry.kind)] += entry.amount_micros
    wrong = []
    for job in jobs.values():
        kinds = by_job[job.id]
        if job.status == JobStatus.succeeded:
            fine = kinds[LedgerEntryKind.hold] == 1 and kinds[LedgerEntryKind.capture] == 1
            fine = fine and amounts[(job.id, LedgerEntryKind.capture)] == -(job.cost_micros or 0)
        else:
            fine = kinds[LedgerEntryKind.capture] == 0 and kinds[LedgerEntryKind.release] == 1
        if not fine or kinds[LedgerEntryKind.release] > 1:
            wrong.append((job.id, str(job.status), job.cost_micros, dict(kinds)))
    verdict.expect(not wrong, "jobs not captured once for their cost (or released once)", wrong[:5])
    cached = {row.user_id: row for row in session.scalars(select(CreditBalance))}
    captured = 0
    for user_id, grant in granted.items():
        balance = sum(e.amount_micros for e in entries if e.user_id == user_id)
        held = sum(e.held_micros for e in entries if e.user_id == user_id)
        cost = sum(
            job.cost_micros or 0
            for job in jobs.values()
            if job.user_id == user_id and job.status == JobStatus.succeeded
        )
        captured += cost
        row = cached.get(user_id)
        sums = (row.balance_micros, row.held_micros) if row is not None else None
        verdict.expect(held == 0, f"holds left open for {user_id}", held)
        verdict.expect(sums == (balance, held), f"ledger of {user_id} != its balance", sums)
        verdict.expect(
            balance == grant - cost >= 0,
            f"balance of {user_id} != granted - captured (or below zero)",
            (balance, grant, cost),
        )
    verdict.figures["captured_micros"] = captured


def _check_webhooks(
    verdict: Verdict, session: Session, jobs: dict[str, Job], receipts: list[Receipt]
) -> None:
    outbox = session.scalars(select(WebhookDelivery)).all()
    secrets = dict(session.execute(select(User.id, User.webhook_secret)).all())
    expected = set()
    for job in jobs.values():
        if job.status == JobStatus.succeeded:
            expected |= {(job.id, event) for event in SUCCESS_EVENTS}
        else:
            expected |= {(job.id, "completed")} | ({(job.id, "start")} if job.attempt else set())
    queued = {(row.job_id, row.event_type) for row in outbox}
    verdict.expect(queued == expected, "outbox events != what the jobs caused", queued ^ expected)
    undelivered = [
        (r.event_id, str(r.status), r.last_error)
        for r in outbox
        if r.status != DeliveryStatus.delivered
    ]
    verdict.expect(not undelivered, "webhook deliveries not delivered", undelivered[:5])
    ids = {row.event_id: (row.job_id, row.event_type) for row in outbox}
    seen: dict[str, set[tuple[str, str]]] = defaultdict(set)
    forged = []
    for receipt in receipts:
        seen[receipt.webhook_id].add((receipt.job_id, receipt.event_type.removeprefix("job.")))
        headers = {
            "webhook-id": receipt.webhook_id,
            "webhook-timestamp": receipt.timestamp,
            "webhook-signature": receipt.signature,
        }
        secret = secrets.get(jobs[receipt.job_id].user_id) if receipt.job_id in jobs else None
        try:
            verify(
                secret or "", headers, receipt.body, tolerance_seconds=SIGNATURE_TOLERANCE_SECONDS
            )
        except WebhookVerificationError as exc:
            forged.append((receipt.webhook_id, str(exc)))
    verdict.expect(not forged, "receipts with a bad signature", forged[:5])
    mixed = {webhook_id: events for webhook_id, events in seen.items() if len(events) != 1}
    verdict.expect(not mixed, "one webhook-id carried different events", mixed)
    unknown = set(seen) - set(ids)
    verdict.expect(not unknown, "received webhook-ids the outbox never had", unknown)
    missing = set(ids) - set(seen)
    verdict.expect(not missing, "webhook events never received", sorted(missing)[:5])
    per_event = Counter(next(iter(events)) for events in seen.values() if len(events) == 1)
    doubled = [event for event, count in per_event.items() if count > 1]
    verdict.expect(not doubled, "an event received under several webhook-ids", doubled[:5])
    mismatched = [i for i in set(ids) & set(seen) if seen[i] != {ids[i]}]
    verdict.expect(not mismatched, "a webhook-id received with another job's event", mismatched)
    verdict.figures.update(
        webhook_events=len(ids),
        webhook_receipts=len(receipts),
        webhook_distinct_ids_received=len(seen),
        webhook_redelivered_ids=sum(
            1 for c in Counter(r.webhook_id for r in receipts).values() if c > 1
        ),
        webhook_outbox_attempts=sum(row.attempt for row in outbox),
    )
