"""Ending a finished batch's succeeded jobs together: a few statements for the whole batch.

On PostgreSQL one fenced UPDATE marks every job of the batch succeeded (its rows come from one
JSON parameter: jsonb_to_recordset), and what the ends cause is written for all of them at once
(JobEffects.ended_many: one multi-row INSERT of usage events, the job events at commit, credit
settled only for the jobs that hold some). Each row is fenced by its own claim token, exactly as
transitions.complete fences one: a job whose lease was taken over matches nothing and is left to
its new holder. On SQLite (one embedded worker) each job is completed on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from goshen.db.models import Job, JobStatus, utcnow
from serving.jobs import transitions
from serving.jobs.claim import Claim
from serving.jobs.effects import Completion, JobEffects
from serving.jobs.events import MAX_LOG_CHARACTERS, Entry, entry_events, progress


@dataclass(frozen=True)
class Finished:
    """A job of a finished batch that succeeded: its claim, result and last report entries."""

    claim: Claim
    done: Completion
    entries: Sequence[Entry] = ()


# COALESCE: a job that reported no step keeps its progress; '' appends no log line.
_COMPLETE = text(
    """
    UPDATE jobs SET
        status = :succeeded,
        output = v.output,
        completed_at = :now,
        run_seconds = v.run_seconds,
        device = v.device,
        peak_memory_bytes = v.peak_memory_bytes,
        cost_micros = v.cost_micros,
        lease_owner = NULL,
        lease_expires_at = NULL,
        progress = COALESCE(v.progress, jobs.progress),
        logs = substr(jobs.logs || v.lines, 1, :max_log)
    FROM jsonb_to_recordset(:rows) AS v(
        id text, token text, output jsonb, run_seconds float8, device text,
        peak_memory_bytes bigint, cost_micros bigint, progress jsonb, lines text
    )
    WHERE jobs.id = v.id AND jobs.claim_token = v.token
        AND jobs.status = :running
    RETURNING jobs.*
    """
).bindparams(bindparam("rows", type_=JSONB))


def complete_batch(
    session: Session,
    finished: Sequence[Finished],
    effects: JobEffects,
    now: datetime | None = None,
    holding: set[str] | None = None,
) -> list[Job]:
    """Mark each finished job succeeded with its output and entries, and write what that causes;
    the jobs completed, in order (a stale claim's job is left out). The caller has locked the
    balances of the users of the jobs that hold credit (ledger.lock_balances), and may say
    which those jobs are (`holding`: effects.holding_credit)."""
    now = now or utcnow()
    if not finished:
        return []
    if session.get_bind().dialect.name != "postgresql":
        jobs = []
        for item in finished:
            job = transitions.complete(session, item.claim, item.done, effects, item.entries, now)
            if job is not None:
                jobs.append(job)
        return jobs
    statement = select(Job).from_statement(_COMPLETE)
    rows = session.scalars(
        statement,
        {
            "rows": [_row(item) for item in finished],
            "now": now,
            "succeeded": JobStatus.succeeded.value,
            "running": JobStatus.running.value,
            "max_log": MAX_LOG_CHARACTERS,
        },
        execution_options={"populate_existing": True},
    ).all()
    by_id = {job.id: job for job in rows}
    ended = [(by_id[item.claim.job_id], item) for item in finished if item.claim.job_id in by_id]
    for job, item in ended:
        entry_events(session, job.id, item.entries)
    effects.ended_many(session, [(job, item.done) for job, item in ended], holding)
    return [job for job, _ in ended]


def _row(item: Finished) -> dict[str, object]:
    steps = [value for kind, value in item.entries if kind == "progress"]
    lines = [value for kind, value in item.entries if kind == "log"]
    done = item.done
    return {
        "id": item.claim.job_id,
        "token": item.claim.token,
        "output": done.output,
        "run_seconds": done.run_seconds,
        "device": done.device,
        "peak_memory_bytes": done.peak_memory_bytes,
        "cost_micros": done.cost_micros,
        "progress": progress(*steps[-1]) if steps else None,
        "lines": "".join(f"{line}\n" for line in lines),
    }
