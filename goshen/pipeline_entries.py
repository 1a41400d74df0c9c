"""Catalog entries for the diffusers pipelines operators register: names, owners, versions.

An entry a user owns is named `<user id>.<name>`, as is its registered model (the way their
trained models are named); a public entry has the plain name. Registering a folder again under
an entry's name adds a version to that entry's registered model, which the entry then serves
(deploy) or only records.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from goshen import catalog
from goshen.db.models import Model, ModelRuntime, ModelStatus, ModelVersion, PricingUnit, Visibility
from goshen.errors import ConflictError, InvalidInputError
from goshen.training import MODEL_NAME, registered_model_name

SOURCE = "pipeline"


def entry_name(name: str, owner_id: str | None) -> str:
    """The catalog and registered model name of a pipeline entry: `name` when public,
    `<user id>.<name>` when a user owns it. InvalidInputError unless developers can call `name`."""
    if not MODEL_NAME.match(name):
        raise InvalidInputError(
            f"{name!r} is not a model name: use 2-63 lowercase letters, digits or '-'",
            field="name",
        )
    return name if owner_id is None else registered_model_name(owner_id, name)


def entry_to_update(session: Session, name: str, owner_id: str | None) -> Model | None:
    """The entry a pipeline registered as `name` adds a version to; None when the name is free.

    ConflictError when an entry no pipeline may update holds the name: one that is not a
    diffusers pipeline, belongs to another owner, or was deleted.
    """
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        return None
    if model.runtime != ModelRuntime.diffusers:
        raise ConflictError(
            f"the catalog's model {name!r} is not a diffusers pipeline (its runtime is "
            f"{model.runtime}), so no pipeline can update it; pick another name"
        )
    if model.owner_id != owner_id:
        raise ConflictError(
            f"the catalog's model {name!r} belongs to another owner; pick another name"
        )
    if model.deleted_at is not None:
        raise ConflictError(f"the catalog's model {name!r} was deleted; pick another name")
    return model


def add_entry(
    session: Session,
    *,
    name: str,
    registered_model: str,
    version: str,
    run_id: str | None,
    description: str,
    pricing_unit: PricingUnit,
    price_micros: int,
    owner_id: str | None,
) -> Model:
    """A new entry serving `version`, pinned: private to its owner when it has one, else public."""
    model = catalog.add_pipeline_entry(
        session,
        name=name,
        registered_model=registered_model,
        version=version,
        description=description,
        pricing_unit=pricing_unit,
        price_micros=price_micros,
        visibility=Visibility.public if owner_id is None else Visibility.private,
        owner_id=owner_id,
    )
    record_version(session, model, version, run_id)
    return model


def add_version(
    session: Session, model: Model, version: str, *, run_id: str | None, deploy: bool
) -> None:
    """Record a new registered version of an entry. With `deploy` the entry serves it, pinned,
    the version it served kept as `previous_version` for rollback; without, it serves what it
    served."""
    record_version(session, model, version, run_id)
    if not deploy:
        return
    serving = catalog.serving_version(model)
    if serving != version:
        model.previous_version = serving
    model.pinned_version = model.live_version = version
    model.status, model.status_error = ModelStatus.ready, None
    session.flush()


def record_version(session: Session, model: Model, version: str, run_id: str | None) -> None:
    """The platform's record of a registered pipeline version: an operator's folder, with no
    metrics and no quality checks run on it."""
    session.add(
        ModelVersion(
            model_id=model.id,
            version=version,
            source=SOURCE,
            metrics={},
            checks_passed=None,
            mlflow_run_id=run_id,
        )
    )
    session.flush()
