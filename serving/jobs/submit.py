"""Taking a generation request: check it whole, honour its Idempotency-Key, queue it.

Nothing is queued (and no key consumed) until the model, its input, the webhook URL, the
account's limits and its credit all check out: the job is queued with a hold on the most it may
cost, in one transaction with the check (goshen.billing.ledger). A key is scoped to its account
and lives 24 hours: the same key and body return the job it made; the same key with another body
is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from goshen import catalog, logs, registry, tracing
from goshen.accounts import Principal
from goshen.billing import ledger
from goshen.billing.pricing import most_a_job_can_cost
from goshen.config import Settings
from goshen.db.models import Job, JobStatus, Model, ModelKind, Role, User, utcnow
from goshen.errors import ConflictError, InvalidInputError, RateLimitedError, UnavailableError
from goshen.runtimes.inputs import GenerationInput, batch_key, checked_input
from serving.jobs.transitions import enqueue
from serving.schemas import JobCreate
from serving.webhooks.url_guard import check_webhook_url

IDEMPOTENCY_TTL = timedelta(hours=24)
INTERACTIVE_PRIORITY = 1  # someone holds a connection open (Prefer: wait)
ACTIVE_JOBS_RETRY_AFTER_SECONDS = 5
REGISTRY_RETRY_AFTER_SECONDS = 5
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    job: Job
    model: Model
    replayed: bool


def submit(
    session: Session,
    principal: Principal,
    body: JobCreate,
    settings: Settings,
    *,
    idempotency_key: str | None,
    interactive: bool,
) -> Submission:
    """Validate and queue a generation job, or return the one this Idempotency-Key made; in a
    `goshen.submit` span, whose trace the job's claim, run and deliveries join (goshen.tracing)."""
    with tracing.span("goshen.submit", {"goshen.model": body.model}):
        submission = _submit(
            session,
            principal,
            body,
            settings,
            idempotency_key=idempotency_key,
            interactive=interactive,
        )
        job_id = submission.job.id
        tracing.annotate({"goshen.job_id": job_id, "goshen.replayed": submission.replayed})
    if not submission.replayed:
        log.info("queued job %s for %s", job_id, submission.model.name, extra={"job_id": job_id})
    return submission


def _submit(
    session: Session,
    principal: Principal,
    body: JobCreate,
    settings: Settings,
    *,
    idempotency_key: str | None,
    interactive: bool,
) -> Submission:
    """No transaction stays open across the slow parts (the webhook URL's DNS lookup, a registry
    call): on SQLite every transaction holds the database's write lock.
    """
    user = principal.user
    fingerprint = request_fingerprint(body)
    if idempotency_key is not None:
        # A replay answers with its job even if the model changed since: it made the job then.
        replay = _replay(session, user.id, idempotency_key, fingerprint)
        if replay is not None:
            return replay
    if body.webhook is not None:
        check_webhook_url(body.webhook, allow_loopback=settings.webhook_allow_loopback)
    model = catalog.get_visible(session, body.model, user.id)
    if model.kind != ModelKind.diffusion:
        raise InvalidInputError(
            f"model {model.name} is not an image generator; call POST /v1/models/{model.name}"
            "/predict instead",
            field="model",
        )
    model_input = validate_input(model, body)
    session.commit()
    version = _live_version(session, model, settings)
    # One account's submissions go one at a time from here, so its key lookups, its active-job
    # count and its credit cannot race. FOR NO KEY UPDATE on PostgreSQL: rows that reference the
    # user (a worker ending this account's jobs writes usage and ledger rows) take only a key-share
    # lock on it, and must not wait for a submission that waits for that worker's balance lock.
    session.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))
    if idempotency_key is not None:
        replay = _replay(session, user.id, idempotency_key, fingerprint)
        if replay is not None:
            return replay
    _check_active_jobs(session, user, settings.max_active_jobs_per_user)
    job = Job(
        user_id=user.id,
        api_key_id=principal.key.id,
        model_id=model.id,
        model_version=version,
        input=model_input.model_dump(mode="json"),
        batch_key=batch_key(model_input),
        priority=INTERACTIVE_PRIORITY if interactive else 0,
        max_attempts=settings.job_max_attempts,
        timeout_seconds=settings.job_timeout_seconds,
        webhook=body.webhook,
        webhook_events=list(body.webhook_events_filter or []),
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint if idempotency_key else None,
        request_id=logs.current_request_id(),
        traceparent=tracing.current_traceparent(),
    )
    try:
        enqueue(session, job)
        hold_credit(
            session,
            principal,
            job,
            model,
            model_input.num_images,
            billing_enabled=settings.billing_enabled,
        )
        session.commit()
    except IntegrityError:
        # The same key, sent concurrently, made its job first.
        session.rollback()
        assert idempotency_key is not None, "only the idempotency key is unique per account"
        replay = _replay(session, user.id, idempotency_key, fingerprint)
        assert replay is not None
        return replay
    return Submission(job, model, replayed=False)


def hold_credit(
    session: Session,
    principal: Principal,
    job: Job,
    model: Model,
    images: int,
    *,
    billing_enabled: bool = True,
) -> None:
    """Hold the most `job` (flushed) may cost, in the transaction that queues it: refused with
    402 when the account's available credit is short (unless it is an admin's or unmetered),
    or when it would take the key past its monthly spend cap. Nothing with billing off."""
    if not billing_enabled:
        return
    user = principal.user
    ledger.hold(
        session,
        user_id=user.id,
        job_id=job.id,
        amount_micros=most_a_job_can_cost(
            model, images=images, timeout_seconds=job.timeout_seconds or 0
        ),
        refuse_short=not (user.role == Role.admin or user.unmetered),
        api_key_id=principal.key.id,
        spend_cap_micros=principal.key.monthly_spend_cap_micros,
    )


def _replay(session: Session, user_id: str, key: str, fingerprint: str) -> Submission | None:
    """The submission this key made, its transaction ended; None if there is none."""
    earlier = _earlier_submission(session, user_id, key, fingerprint)
    model = session.get(Model, earlier.model_id) if earlier is not None else None
    session.commit()
    if earlier is None:
        return None
    assert model is not None, "catalog entries with jobs are never deleted (RESTRICT)"
    return Submission(earlier, model, replayed=True)


def validate_input(model: Model, body: JobCreate) -> GenerationInput:
    """The request's input checked against the model's schema (and its classes, when it has
    some: the label is stored as the class name), its seed filled in."""
    try:
        checked = checked_input(model.runtime, model.classes, body.input)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", "input", *error["loc"])} for error in exc.errors()]
        ) from None
    return checked.with_seed()


def request_fingerprint(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _earlier_submission(session: Session, user_id: str, key: str, fingerprint: str) -> Job | None:
    """The live job this key made, None when there is none (or it expired, which frees the key)."""
    job = session.scalar(select(Job).where(Job.user_id == user_id, Job.idempotency_key == key))
    if job is None:
        return None
    if utcnow() - job.created_at > IDEMPOTENCY_TTL:
        session.execute(update(Job).where(Job.id == job.id).values(idempotency_key=None))
        return None
    if job.request_fingerprint != fingerprint:
        raise InvalidInputError(
            "this Idempotency-Key was used with a different request body in the last 24 hours; "
            "send a new key for a new request",
            field="Idempotency-Key",
        )
    return job


def _live_version(session: Session, model: Model, settings: Settings) -> str:
    """The version new jobs run: pinned, live, or (first time) the registry alias's, asked
    outside any transaction."""
    version = catalog.check_callable(model)
    if version is not None:
        return version
    if model.alias is not None:
        try:
            found = registry.version_for_alias(
                settings.resolved_mlflow_tracking_uri,
                model.registered_model,
                model.alias,
                settings.dependency_timeout_seconds,
            )
        except registry.RegistryUnavailableError as exc:
            # Where the registry is and what it said are for the log, not for developers.
            log.warning("could not resolve %s@%s: %s", model.registered_model, model.alias, exc)
            raise UnavailableError(
                f"model {model.name} cannot take jobs for now: the model registry does not "
                "answer; try again shortly",
                retry_after_seconds=REGISTRY_RETRY_AFTER_SECONDS,
            ) from exc
        if found is not None:
            catalog.set_live_version(session, model.registered_model, model.alias, found)
            return found
    raise ConflictError(
        f"model {model.name} has no live version yet: {model.registered_model}@{model.alias} "
        "is not in the MLflow registry (the built-in models are made by "
        "`goshen train digits`)"
    )


def _check_active_jobs(session: Session, user: User, limit: int) -> None:
    """Refuse a submission past the account's cap on queued and running jobs."""
    active = session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.user_id == user.id, Job.status.in_([JobStatus.queued, JobStatus.running]))
    ).scalar_one()
    if active >= limit:
        raise RateLimitedError(
            f"this account has {active} queued or running jobs, the most it may have "
            "(GOSHEN_MAX_ACTIVE_JOBS_PER_USER); wait for some to finish or cancel them",
            retry_after_seconds=ACTIVE_JOBS_RETRY_AFTER_SECONDS,
        )
