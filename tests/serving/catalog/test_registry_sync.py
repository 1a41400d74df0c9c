"""The catalog follows the registry: entries that follow an alias and serve nothing yet start
serving once the registry has it, on every API replica at once, and a registry that is down is
waited for (logged once per outage)."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model, ModelKind, ModelRuntime, ModelStatus, PricingUnit, Visibility
from serving.catalog.registry_sync import NOT_LOOKED_UP, RegistrySync
from tests.fixtures.models import RegisteredModel


def _entry(sessions: sessionmaker[Session], registered_model: str, **changes: Any) -> str:
    """A public catalog entry following `registered_model@production` that serves nothing yet
    (an ONNX one unless `kind` says otherwise); its id."""
    fields: dict[str, Any] = {
        "alias": registry.PRODUCTION,
        "pricing_unit": PricingUnit.request,
        "price_micros": 0,
        "visibility": Visibility.public,
        "status": ModelStatus.deploying,
        **changes,
    }
    name = f"sync-{secrets.token_hex(3)}"
    if fields.pop("kind", ModelKind.onnx) == ModelKind.diffusion:
        model = catalog.generation_entry(
            name, ModelRuntime.onnx_diffusion, registered_model, **fields
        )
    else:
        model = Model(
            name=name,
            kind=ModelKind.onnx,
            runtime=ModelRuntime.onnx,
            registered_model=registered_model,
            **fields,
        )
    with session_scope(sessions) as session:
        session.add(model)
    return model.id


def _read(sessions: sessionmaker[Session], model_id: str) -> Model:
    with sessions() as session:
        model = session.get(Model, model_id)
        assert model is not None
        return model


def _sync(settings: Settings, tracking_uri: str) -> RegistrySync:
    return RegistrySync(
        Settings(
            **{
                **settings.model_dump(),
                "_env_file": None,
                "mlflow_tracking_uri": tracking_uri,
                "dependency_timeout_seconds": 2,
            }
        )
    )


def test_entries_of_both_kinds_start_serving_once_their_alias_appears(
    settings: Settings,
    sessions: sessionmaker[Session],
    mlflow_server: str,
    register_classifier: Callable[..., RegisteredModel],
) -> None:
    name = f"sync-{secrets.token_hex(3)}"
    predictor = _entry(sessions, name)
    generator = _entry(sessions, name, kind=ModelKind.diffusion)
    untouched = {
        "failed": _entry(sessions, name, status=ModelStatus.failed),
        "disabled": _entry(sessions, name, status=ModelStatus.disabled),
        "pinned": _entry(sessions, name, pinned_version="7"),
        "other alias": _entry(sessions, name, alias="staging"),
    }
    sync = _sync(settings, mlflow_server)
    assert sync.why_waiting(predictor) == NOT_LOOKED_UP

    sync.run(sessions, sessions)
    assert _read(sessions, predictor).status == ModelStatus.deploying
    assert sync.why_waiting(predictor) == f"{name}@production is not in the MLflow registry yet"

    live = register_classifier(name)
    sync.run(sessions, sessions)
    for model_id in (predictor, generator):
        model = _read(sessions, model_id)
        assert (model.status, model.live_version, model.status_error) == (
            ModelStatus.ready,
            live.version,
            None,
        )
    for why, model_id in untouched.items():
        model = _read(sessions, model_id)
        assert model.live_version is None, why
    assert _read(sessions, untouched["other alias"]).status == ModelStatus.deploying
    assert sync.why_waiting(untouched["other alias"]) == (
        f"{name}@staging is not in the MLflow registry yet"
    )


def test_replicas_syncing_at_once_switch_an_entry_once(
    settings: Settings,
    sessions: sessionmaker[Session],
    mlflow_server: str,
    register_classifier: Callable[..., RegisteredModel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"sync-{secrets.token_hex(3)}"
    live = register_classifier(name)
    model_id = _entry(sessions, name)
    replicas = [_sync(settings, mlflow_server) for _ in range(4)]
    start = threading.Barrier(len(replicas))
    errors: list[Exception] = []

    def run(sync: RegistrySync) -> None:
        start.wait()
        try:
            sync.run(sessions, sessions)
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(sync,)) for sync in replicas]
    with caplog.at_level(logging.INFO, logger="serving.catalog.registry_sync"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    model = _read(sessions, model_id)
    assert (model.status, model.live_version) == (ModelStatus.ready, live.version)
    switched = [record for record in caplog.records if " serves v" in record.getMessage()]
    assert len(switched) == 1, [record.getMessage() for record in switched]


def test_a_registry_that_is_down_is_waited_for_and_logged_once_per_outage(
    settings: Settings,
    sessions: sessionmaker[Session],
    mlflow_server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model_id = _entry(sessions, f"sync-{secrets.token_hex(3)}")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"
        sync = _sync(settings, down)
        with caplog.at_level(logging.INFO, logger="serving.catalog.registry_sync"):
            for _ in range(3):
                sync.run(sessions, sessions)
            sync.tracking_uri = mlflow_server  # it answers again
            sync.run(sessions, sessions)
            sync.tracking_uri = down  # a second outage
            sync.run(sessions, sessions)
    messages = [record.getMessage() for record in caplog.records]
    outages = [message for message in messages if "wait for the registry" in message]
    assert len(outages) == 2 and all(down in message for message in outages), outages
    assert sum("answers again" in message for message in messages) == 1
    assert _read(sessions, model_id).status == ModelStatus.deploying
    assert sync.why_waiting(model_id).startswith("the MLflow registry does not answer")
