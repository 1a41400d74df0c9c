"""The model catalog: what developers can call, which registry version is live, what it costs.

The platform's own models are catalog entries from the first start; their live version follows
the MLflow alias `production`, which the Dagster promotion assets move.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from goshen.db.models import (
    Model,
    ModelKind,
    ModelRuntime,
    ModelStatus,
    ModelVersion,
    PricingUnit,
    Visibility,
)
from goshen.errors import ConflictError, NotFoundError
from goshen.runtimes.inputs import input_model

DIGITS_DIFFUSION = "digits-diffusion"
DIGITS_CLASSIFIER = "digits-classifier"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    runtime: ModelRuntime
    description: str
    pricing_unit: PricingUnit
    price_micros: int


BUILTIN_MODELS = (
    BuiltinModel(
        name=DIGITS_DIFFUSION,
        runtime=ModelRuntime.onnx_diffusion,
        description="Handwritten digits from a class-conditional diffusion model the platform "
        "trains on scikit-learn's digits (8x8 grayscale PNGs). Ask for a digit, get images.",
        pricing_unit=PricingUnit.image,
        price_micros=1_000,
    ),
    BuiltinModel(
        name=DIGITS_CLASSIFIER,
        runtime=ModelRuntime.onnx,
        description="Reads a handwritten digit: 8x8 grayscale pixels in [0, 1] (64 features, "
        "row by row) in, the digit and each digit's probability out. Trained on scikit-learn's "
        "digits; the judge of digits-diffusion's samples.",
        pricing_unit=PricingUnit.request,
        price_micros=100,
    ),
)


def schema_for(runtime: ModelRuntime) -> tuple[dict[str, Any], list[Any]]:
    """The JSON Schema and examples a generation runtime's entries publish."""
    schema = input_model(runtime).model_json_schema()
    return schema, list(schema.get("examples", []))


def generation_entry(
    name: str, runtime: ModelRuntime, registered_model: str, **fields: Any
) -> Model:
    """A new catalog entry for an image generator, publishing its runtime's input schema.

    `fields` are the rest of the row: alias or pinned_version, pricing, visibility, status...
    """
    schema, examples = schema_for(runtime)
    return Model(
        name=name,
        kind=ModelKind.diffusion,
        runtime=runtime,
        registered_model=registered_model,
        input_schema=schema,
        examples=examples,
        **fields,
    )


def ensure_builtin_models(session: Session) -> None:
    """Add the platform's own models to the catalog when missing; keep what admins changed."""
    for builtin in BUILTIN_MODELS:
        if session.scalar(select(Model.id).where(Model.name == builtin.name)) is not None:
            continue
        fields: dict[str, Any] = {
            "description": builtin.description,
            "alias": "production",
            "pricing_unit": builtin.pricing_unit,
            "price_micros": builtin.price_micros,
            "visibility": Visibility.public,
            "status": ModelStatus.deploying,
        }
        if builtin.runtime == ModelRuntime.onnx:
            # Its input schema comes from the ONNX graph, once a serving process loads it.
            model = Model(
                name=builtin.name,
                kind=ModelKind.onnx,
                runtime=builtin.runtime,
                registered_model=builtin.name,
                **fields,
            )
        else:
            model = generation_entry(builtin.name, builtin.runtime, builtin.name, **fields)
        try:
            with session.begin_nested():
                session.add(model)
        except IntegrityError:
            pass  # another API replica added it first


def add_pipeline_entry(
    session: Session,
    *,
    name: str,
    registered_model: str,
    version: str,
    description: str,
    pricing_unit: PricingUnit,
    price_micros: int,
    visibility: Visibility,
    owner_id: str | None = None,
) -> Model:
    """A catalog entry serving a registered diffusers text-to-image pipeline at `version`."""
    if session.scalar(select(Model.id).where(Model.name == name)) is not None:
        raise ConflictError(f"the catalog already has a model named {name!r}; pick another name")
    model = generation_entry(
        name,
        ModelRuntime.diffusers,
        registered_model,
        description=description,
        pinned_version=version,
        live_version=version,
        pricing_unit=pricing_unit,
        price_micros=price_micros,
        visibility=visibility,
        status=ModelStatus.ready,
        owner_id=owner_id,
    )
    session.add(model)
    session.flush()
    return model


def owned_name(user_id: str, model_name: str) -> str:
    """The catalog (and MLflow registry) name of a model its owner named `model_name`."""
    return f"{user_id}.{model_name}"


# What Prometheus labels customers' models with: /metrics takes no key, and their names carry
# their owners' ids; one label for all of them also keeps the series bounded.
CUSTOMER_MODELS_LABEL = "customer-models"


def metric_label(name: str, owner_id: str | None) -> str:
    """A model's `model` label in metrics: its name for the operator's models, one shared
    label for customers' (a customer's model and its owner stay out of an unkeyed endpoint)."""
    return name if owner_id is None else CUSTOMER_MODELS_LABEL


def candidate_names(name: str, user_id: str) -> list[str]:
    """What `name` may mean to this caller, first match wins: a plain name is their own model
    of that name, else the public entry; a qualified one (`usr_....name`) is that entry."""
    if "." in name:
        return [name]
    return [owned_name(user_id, name), name]


def visible_to(user_id: str) -> ColumnElement[bool]:
    """A filter for the catalog entries a user may call: public ones and their own."""
    return and_(
        Model.deleted_at.is_(None),
        or_(Model.visibility == Visibility.public, Model.owner_id == user_id),
    )


def is_visible(model: Model, user_id: str) -> bool:
    """The Python form of `visible_to`, for entries read from a cache."""
    if model.deleted_at is not None:
        return False
    return model.visibility == Visibility.public or model.owner_id == user_id


def get_visible(session: Session, name: str, user_id: str) -> Model:
    """The entry `name` means to this user (candidate_names), if they may see it;
    NotFoundError otherwise."""
    names = candidate_names(name, user_id)
    found = {
        model.name: model
        for model in session.scalars(
            select(Model).where(Model.name.in_(names), visible_to(user_id))
        )
    }
    for candidate in names:
        if candidate in found:
            return found[candidate]
    raise NotFoundError(f"no model named {name!r}; GET /v1/models lists the ones you can call")


def get_owned(session: Session, name: str, user_id: str) -> Model:
    """The entry `name` means to this user if they own it; NotFoundError for anything else
    (another account's model reads as missing, never as forbidden)."""
    model = get_visible(session, name, user_id)
    if model.owner_id != user_id:
        raise NotFoundError(
            f"no model of yours named {name!r}; GET /v1/models?owner=me lists the ones you own"
        )
    return model


def check_callable(model: Model) -> str | None:
    """Raise ConflictError unless the entry can take jobs; returns its live version, if known."""
    if model.status in (ModelStatus.disabled, ModelStatus.failed):
        raise ConflictError(not_deployed(model))
    return serving_version(model)


def not_deployed(model: Model) -> str:
    """Why an entry takes no calls, as its callers see it. Why a deploy failed is for admins
    (GET /v1/admin/models/{name}): the registry's error may name its internals."""
    if model.status == ModelStatus.disabled and model.owner_id is not None:
        return (
            f"model {model.name} is not deployed: its owner undeployed it or has not deployed "
            f"it yet (POST /v1/models/{model.name}/deploy serves it)"
        )
    if model.status == ModelStatus.disabled:
        return (
            f"model {model.name} is not deployed: an admin undeployed it "
            f"(POST /v1/admin/models/{model.name}/deploy serves it again)"
        )
    if model.status == ModelStatus.failed:
        return f"model {model.name} is not deployed: its last deploy failed; ask an admin"
    return f"model {model.name} is not deployed yet ({model.status}); try again shortly"


def serving_version(model: Model) -> str | None:
    """The version an entry serves: its pinned version, else its alias's live one."""
    return model.pinned_version or model.live_version


def set_live_version(session: Session, registered_model: str, alias: str, version: str) -> int:
    """Point every entry that follows `registered_model@alias` at `version`; how many changed."""
    entries = session.scalars(
        select(Model).where(Model.registered_model == registered_model, Model.alias == alias)
    ).all()
    for model in entries:
        if model.live_version != version:
            model.previous_version = model.live_version
            model.live_version = version
        if model.status == ModelStatus.deploying:
            model.status = ModelStatus.ready
        model.status_error = None
        publish_version(session, model)
    return len(entries)


def version_record(session: Session, model: Model) -> ModelVersion | None:
    """What the platform recorded of the version an entry serves (None: nothing recorded)."""
    version = serving_version(model)
    if version is None:
        return None
    return session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == version
        )
    )


def publish_version(session: Session, model: Model) -> None:
    """Publish what the version an entry serves takes (its input schema, examples and class
    names), where the platform recorded it (model_versions); others keep their runtime's."""
    recorded = version_record(session, model)
    if recorded is None or recorded.input_schema is None:
        return
    model.input_schema = recorded.input_schema
    model.examples = recorded.examples or []
    model.classes = recorded.classes


def awaiting_alias() -> ColumnElement[bool]:
    """A filter for the entries that follow an alias but serve nothing yet (a built-in one on a
    fresh platform): the API resolves their alias against the registry until it exists."""
    return and_(
        Model.status == ModelStatus.deploying,
        Model.alias.is_not(None),
        Model.live_version.is_(None),
        Model.pinned_version.is_(None),
    )


def start_serving(session: Session, model_id: str, alias: str, version: str) -> bool:
    """Serve `version` (what `alias` points at) from an entry awaiting that alias; False when it
    no longer awaits it (another API replica or an admin deploy got there first)."""
    changed = session.scalar(
        update(Model)
        .where(Model.id == model_id, Model.alias == alias, awaiting_alias())
        .values(live_version=version, status=ModelStatus.ready, status_error=None)
        .returning(Model.id)
    )
    if changed is None:
        return False
    model = session.get(Model, model_id, populate_existing=True)
    if model is not None:
        publish_version(session, model)
    return True


def price(model: Model, *, images: int, seconds: float) -> tuple[float, int]:
    """(quantity in the model's pricing unit, cost in micro-credits) of one job or request."""
    unit = model.pricing_unit
    if unit == PricingUnit.image:
        quantity = float(images)
    elif unit == PricingUnit.second:
        quantity = seconds
    elif unit == PricingUnit.request:
        quantity = 1.0
    else:
        raise ValueError(f"no price for pricing unit {unit!r}")
    return quantity, round(quantity * model.price_micros)
