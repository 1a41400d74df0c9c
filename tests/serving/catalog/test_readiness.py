"""The `models` check of /readyz: nothing is ready before the first reconcile pass, and entries
still waiting for their alias are listed (public ones only) without holding readiness back."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from goshen import registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model, ModelKind, ModelRuntime, ModelStatus, PricingUnit, Visibility
from serving.catalog.readiness import NOT_RECONCILED_YET, DeployingModel, catalog_check
from serving.catalog.registry_sync import NOT_LOOKED_UP, RegistrySync
from serving.predict.models import PredictModels


def _waiting_entry(sessions: sessionmaker[Session], name: str, visibility: Visibility) -> None:
    with session_scope(sessions) as session:
        session.add(
            Model(
                name=name,
                kind=ModelKind.onnx,
                runtime=ModelRuntime.onnx,
                registered_model=name,
                alias=registry.PRODUCTION,
                pricing_unit=PricingUnit.request,
                visibility=visibility,
                status=ModelStatus.deploying,
            )
        )


def test_nothing_is_ready_before_the_first_reconcile_pass(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    _waiting_entry(sessions, "waiting-public", Visibility.public)
    _waiting_entry(sessions, "waiting-private", Visibility.private)
    models = PredictModels(settings, RegistrySync(settings))

    early = catalog_check(sessions, models, wait_seconds=0.05)
    assert (early.ok, early.error) == (False, NOT_RECONCILED_YET)

    models.first_pass.set()
    ready = catalog_check(sessions, models, wait_seconds=0)
    assert (ready.ok, ready.error, ready.models) == (True, None, [])
    assert ready.deploying == [
        DeployingModel(
            name="waiting-public", follows="waiting-public@production", reason=NOT_LOOKED_UP
        )
    ]
