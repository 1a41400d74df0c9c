"""`goshen models add-pipeline`: register a diffusers pipeline folder and serve it from the catalog.

A new name makes a new entry; the name of an existing pipeline entry adds a version to that
entry's registered model and rolls it out (or, with --no-deploy, only registers it). Everything
that can be checked (flags, folder, owner, name, the entry it updates) is checked before MLflow
registers anything, and a version whose catalog write fails is deleted again: a refusal leaves
no orphan version behind.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
from sqlalchemy.orm import Session

from goshen import accounts, catalog, pipeline_entries, registry
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import PricingUnit
from goshen.errors import ConflictError, InvalidInputError, NotFoundError
from goshen.registry import RegisteredVersion
from goshen.tracking import running_tracking_server


@dataclass(frozen=True)
class PipelineRequest:
    """What `goshen models add-pipeline` was asked: the folder, the entry's name, and the
    entry's fields to set (None: a new entry's default, an existing entry's value kept)."""

    folder: Path
    name: str
    description: str | None = None
    unit: str | None = None
    price_micros: int | None = None
    owner: str | None = None
    private: bool = False
    no_deploy: bool = False


@dataclass(frozen=True)
class Target:
    """What a registration changes: entry `name` (a new one when `model_id` is None), its
    registered model, and the version it serves before."""

    name: str
    registered_model: str
    model_id: str | None
    owner_id: str | None
    serving: str | None


def add_pipeline(settings: Settings, request: PipelineRequest) -> int:
    """Register `request.folder` and add it to the catalog as `request` says; the exit status."""
    if request.private and request.owner is None:
        raise InvalidInputError(
            "--private needs --owner EMAIL: a private entry without an owner can be called "
            "by nobody, admins included",
            field="owner",
        )
    folder = request.folder
    registry.check_pipeline_folder(folder)
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            target = _target(session, request)
        with running_tracking_server(settings) as uri:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            registered = registry.log_diffusers_pipeline(folder, target.registered_model)
            try:
                with session_scope(sessions) as session:
                    _record(session, target, registered, request)
            except Exception:
                _unregister(registered)
                raise
    finally:
        engine.dispose()
    print(_outcome(target, registered, request))
    return 0


def _target(session: Session, request: PipelineRequest) -> Target:
    """The entry the folder will add to or create; refuses what no registration may change."""
    owner_id = None
    if request.owner is not None:
        owner = accounts.get_user_by_email(session, request.owner)
        if owner is None:
            raise NotFoundError(
                f"no user with email {request.owner}; create them first (POST /v1/admin/users)"
            )
        owner_id = owner.id
    name = pipeline_entries.entry_name(request.name, owner_id)
    model = pipeline_entries.entry_to_update(session, name, owner_id)
    if model is None:
        if request.no_deploy:
            raise ConflictError(
                f"the catalog has no model {name!r} to keep serving; --no-deploy registers a "
                "new version of an existing entry, leave it out to add this one"
            )
        return Target(name, name, None, owner_id, None)
    serving = catalog.serving_version(model)
    return Target(name, model.registered_model, model.id, owner_id, serving)


def _record(
    session: Session, target: Target, registered: RegisteredVersion, request: PipelineRequest
) -> None:
    model = pipeline_entries.entry_to_update(session, target.name, target.owner_id)
    if (model.id if model is not None else None) != target.model_id:
        raise ConflictError(
            f"the catalog's model {target.name!r} changed while the folder was registered; "
            "run the command again"
        )
    if model is None:
        pipeline_entries.add_entry(
            session,
            name=target.name,
            registered_model=registered.name,
            version=registered.version,
            run_id=registered.run_id,
            description=request.description or "",
            pricing_unit=PricingUnit(request.unit or PricingUnit.image),
            price_micros=request.price_micros or 0,
            owner_id=target.owner_id,
        )
        return
    # Flags given on an update change the entry; those left out keep what it has.
    if request.description is not None:
        model.description = request.description
    if request.unit is not None:
        model.pricing_unit = PricingUnit(request.unit)
    if request.price_micros is not None:
        model.price_micros = request.price_micros
    pipeline_entries.add_version(
        session, model, registered.version, run_id=registered.run_id, deploy=not request.no_deploy
    )


def _unregister(registered: RegisteredVersion) -> None:
    """Delete a version the catalog could not record, saying so (or that it could not)."""
    what = f"version {registered.version} of {registered.name}"
    try:
        registry.delete_version(registered.name, registered.version)
    except Exception as exc:  # noqa: BLE001 - the catalog's error, raised next, is the one to fix
        print(
            f"goshen: the catalog was not changed, and deleting the just-registered {what} "
            f"failed ({type(exc).__name__}: {exc}); delete it in MLflow",
            file=sys.stderr,
        )
        return
    print(
        f"goshen: the catalog was not changed, so the just-registered {what} was deleted",
        file=sys.stderr,
    )


def _outcome(target: Target, registered: RegisteredVersion, request: PipelineRequest) -> str:
    done = f"registered version {registered.version} of {registered.name}"
    whose = f" (private to {request.owner})" if target.owner_id else ""
    if request.no_deploy:
        serving = f"version {target.serving}" if target.serving else "nothing"
        return (
            f"{done}, registered only: model {target.name}{whose} still serves {serving}; "
            f"serve the new one with POST /v1/admin/models/{target.name}/deploy "
            f'{{"version": "{registered.version}"}}'
        )
    replaced = f", replacing version {target.serving}" if target.serving else ""
    return (
        f"{done}; model {target.name}{whose} serves it{replaced}: "
        f"generate with model {request.name}"
    )
