"""What the webhook tests share: jobs with a webhook, their queued events, deliveries and secrets;
settings with changes; and DNS answers made up for a name."""

from __future__ import annotations

import secrets
import socket
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, Model, ModelKind, ModelRuntime, PricingUnit, User, WebhookDelivery
from serving.webhooks.outbox import enqueue_event
from serving.webhooks.signing import webhook_secret_for

Sessions = sessionmaker[Session]
PAYLOAD = {"id": "job_x", "status": "succeeded", "output": {"images": ["a.png"]}, "note": "ü"}


def make_job(sessions: Sessions, webhook: str | None, events: list[str] | None = None) -> Job:
    """A job of a fresh user on a fresh catalog model."""
    with session_scope(sessions) as session:
        user = User(email=f"{secrets.token_hex(4)}@example.com")
        model = Model(
            name=f"model-{secrets.token_hex(4)}",
            kind=ModelKind.onnx,
            runtime=ModelRuntime.onnx,
            registered_model="digits-classifier",
            pricing_unit=PricingUnit.request,
        )
        session.add_all([user, model])
        session.flush()
        job = Job(user_id=user.id, model_id=model.id, webhook=webhook, webhook_events=events or [])
        session.add(job)
    return job


def queue_event(sessions: Sessions, job: Job, event: str = "completed") -> bool:
    with session_scope(sessions) as session:
        return enqueue_event(session, job, event, PAYLOAD)


def delivery_of(sessions: Sessions, job: Job, event: str = "completed") -> WebhookDelivery:
    with sessions() as session:
        return session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.job_id == job.id, WebhookDelivery.event_type == event
            )
        ).one()


def secret_of(sessions: Sessions, job: Job) -> str:
    with session_scope(sessions) as session:
        return webhook_secret_for(session, session.get_one(User, job.user_id))


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return Settings(**{**settings.model_dump(), **changes, "_env_file": None})


def fake_dns(monkeypatch: pytest.MonkeyPatch, name: str, *calls: tuple[str, ...]) -> list[str]:
    """Make `name` resolve to calls[k] at the k-th lookup (the last repeats); the lookups made."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != name:
            return real(host, port, *args, **kwargs)
        answer = calls[min(len(asked), len(calls) - 1)]
        asked.append(",".join(answer))
        return [info for address in answer for info in real(address, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked
