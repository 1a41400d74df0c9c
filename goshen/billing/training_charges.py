"""What a training job costs: the most it may cost held at submit, the seconds it ran captured
when it ends.

Training is priced per second of its run (GOSHEN_TRAINING_PRICE_MICROS_PER_SECOND), GPU or CPU,
from the moment the run claims the job (`started_at`) to its end. At submit the job's time limit
at that price (`estimated_cost_micros`, goshen.training) is held, ledger source `training:<id>`,
in the transaction that queues it: refused with 402 when available credit is short (unless the
account is an admin's or unmetered: metered, never refused) or when it would take the key past
its monthly spend cap. A run is stopped at its time limit, so the hold bounds what it can cost.

When the job ends (goshen.training.finish, in the transaction that records the end, its row
locked), `settle` decides what it cost:
- succeeded, or canceled by its user (`cancel_requested`): the seconds it ran times the price,
  never more than the hold, captured; the rest released; a `training` usage event (unit second)
  records the seconds and what was captured;
- failed (an error, a crash, a Dagster run failure, its time limit), or its run terminated by
  an operator rather than its user: the platform's doing, so nothing captured, the whole hold
  released.

With billing off (GOSHEN_BILLING_ENABLED=false) nothing is held, so nothing is captured; the
usage event still records what the seconds cost at the price.

Once only: only the transaction that moves the job out of a running state settles it, and the
ledger moves credit once per source whatever calls it. The usage event names the training job
(unique by training job and kind).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from goshen.accounts import Principal
from goshen.billing import ledger
from goshen.db.models import (
    LedgerEntryKind,
    PricingUnit,
    Role,
    TrainingJob,
    TrainingStatus,
    UsageEvent,
    User,
)

USAGE_KIND = "training"


def source(job_id: str) -> str:
    """The ledger source of a training job's hold, capture and release."""
    return f"training:{job_id}"


def hold(
    session: Session, principal: Principal, job: TrainingJob, *, billing_enabled: bool = True
) -> None:
    """Hold the most `job` (flushed) may cost, in the transaction that queues it: 402
    (InsufficientCreditError, SpendCapExceededError) when credit or the key's cap is short.
    Nothing with billing off (GOSHEN_BILLING_ENABLED)."""
    if not billing_enabled:
        return
    user = principal.user
    # As for generation (serving.jobs.submit): one account's submissions hold credit one at a
    # time, and a key-share lock lets workers ending its jobs write ledger rows meanwhile.
    session.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))
    ledger.hold(
        session,
        user_id=user.id,
        amount_micros=job.estimated_cost_micros or 0,
        refuse_short=not (user.role == Role.admin or user.unmetered),
        source=source(job.id),
        api_key_id=principal.key.id,
        spend_cap_micros=principal.key.monthly_spend_cap_micros,
    )


def seconds_run(job: TrainingJob, ended_at: datetime) -> float:
    """Seconds from the run claiming the job to `ended_at`; 0 for a job that never started."""
    if job.started_at is None:
        return 0.0
    return max(0.0, (ended_at - job.started_at).total_seconds())


def settle(
    session: Session, job: TrainingJob, *, ended_at: datetime, price_micros_per_second: int
) -> int:
    """End `job`'s hold (its row locked, its terminal status just set): capture what it cost
    and release the rest; sets `gpu_seconds` and `cost_micros`. What it cost: what was
    captured, or with billing off (no hold) only metered."""
    seconds = seconds_run(job, ended_at)
    charged = job.status == TrainingStatus.succeeded or (
        job.status == TrainingStatus.canceled and job.cancel_requested
    )
    cost = round(seconds * price_micros_per_second) if charged else 0
    held = ledger.entry(session, source(job.id), LedgerEntryKind.hold)
    if held is not None:
        cost = ledger.settle(session, user_id=job.user_id, cost_micros=cost, source=source(job.id))
    job.gpu_seconds = seconds
    job.cost_micros = cost
    if charged and seconds > 0:
        session.add(
            UsageEvent(
                user_id=job.user_id,
                api_key_id=held.api_key_id if held is not None else None,
                training_job_id=job.id,
                kind=USAGE_KIND,
                quantity=seconds,
                unit=PricingUnit.second,
                cost_micros=cost,
                seconds=seconds,
            )
        )
    return cost
