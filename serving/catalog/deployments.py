"""Catalog entries from the MLflow registry: what a registered version is, and deploying it.

Deploy resolves the entry's alias (or pinned version) to a version, loads it in this process and
probes it with its own example input: the entry ends `ready` serving that version (the one it
replaces kept as `previous_version` for rollback), or `failed` with the error. The entry reads
`deploying` meanwhile, so every API replica answers 409 rather than serve a half-made change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model, ModelKind, ModelRuntime, ModelStatus
from goshen.errors import ConflictError, InvalidInputError, NotFoundError
from goshen.runtimes.onnx.model import OnnxModel
from serving.predict.models import PredictModels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionFacts:
    """What a registered version is, as the catalog records it."""

    version: str
    kind: ModelKind
    runtime: ModelRuntime
    input_schema: dict[str, Any]
    examples: list[Any]


def resolve_version(settings: Settings, model: Model) -> str:
    """The version an entry serves next: its pinned version, else its alias's."""
    uri = settings.resolved_mlflow_tracking_uri
    if model.pinned_version:
        if not registry.version_exists(uri, model.registered_model, model.pinned_version):
            raise NotFoundError(
                f"{model.registered_model} has no version {model.pinned_version} in the registry"
            )
        return model.pinned_version
    if model.alias is None:
        raise ConflictError(f"model {model.name} names neither an alias nor a version")
    version = registry.version_for_alias(uri, model.registered_model, model.alias)
    if version is None:
        raise NotFoundError(f"{model.registered_model}@{model.alias} is not in the MLflow registry")
    return version


def download(settings: Settings, registered_model: str, version: str) -> Path:
    destination = settings.home_dir / "models" / registered_model / version
    return registry.download_version(registered_model, version, destination)


def inspect_version(settings: Settings, registered_model: str, version: str) -> VersionFacts:
    """Download a version and tell what it is: an ONNX model for /predict, the platform's
    class-conditional generator, or a diffusers pipeline."""
    downloaded = download(settings, registered_model, version)
    pipeline = registry.pipeline_folder(downloaded)
    if (pipeline / registry.PIPELINE_INDEX).is_file():
        registry.check_pipeline_folder(pipeline)
        schema, examples = catalog.schema_for(ModelRuntime.diffusers)
        return VersionFacts(version, ModelKind.diffusion, ModelRuntime.diffusers, schema, examples)
    folder = registry.model_folder(downloaded)
    # Imported here: it brings PyTorch, which an API process serving /predict does not need.
    from goshen.runtimes.generators import read_diffusion_spec

    try:
        read_diffusion_spec(folder)
    except Exception:  # noqa: BLE001 - not a diffusion model: it must load as a plain ONNX one
        try:
            onnx = OnnxModel.from_folder(folder)
        except Exception as exc:
            raise InvalidInputError(
                f"{registered_model} v{version} is neither an image generator nor an ONNX model "
                f"/predict can serve: {type(exc).__name__}: {exc}",
                field="registered_model",
            ) from exc
        schema = onnx.public_schema()
        return VersionFacts(version, ModelKind.onnx, ModelRuntime.onnx, schema, [schema["example"]])
    schema, examples = catalog.schema_for(ModelRuntime.onnx_diffusion)
    return VersionFacts(version, ModelKind.diffusion, ModelRuntime.onnx_diffusion, schema, examples)


def probe(
    settings: Settings, predict_models: PredictModels, model: Model, version: str
) -> dict[str, Any] | None:
    """Load `version` as this entry serves it: an ONNX model answers its example input as it
    loads (its published signature is returned); an image generator's version must still be of
    the entry's runtime."""
    if model.runtime == ModelRuntime.onnx:
        return predict_models.load(model, version, retry=True).onnx.public_schema()
    facts = inspect_version(settings, model.registered_model, version)
    if facts.runtime != model.runtime:
        raise ConflictError(
            f"{model.registered_model} v{version} is a {facts.runtime} model, but the entry "
            f"{model.name} serves {model.runtime}; register it as a new entry"
        )
    return None


def deploy(
    factory: sessionmaker[Session],
    settings: Settings,
    predict_models: PredictModels,
    model_id: str,
    *,
    version: str | None = None,
    alias: str | None = None,
) -> Model:
    """Deploy an entry (optionally pinning `version` or following `alias` from now on)."""
    with session_scope(factory) as session:
        model = _entry(session, model_id)
        if version is not None:
            model.pinned_version = version
        elif alias is not None:
            model.pinned_version, model.alias = None, alias
        model.status, model.status_error = ModelStatus.deploying, None
    try:
        target = resolve_version(settings, model)
        schema = probe(settings, predict_models, model, target)
    except Exception as exc:  # noqa: BLE001 - a failed deploy is a state of the entry, kept
        error = f"{type(exc).__name__}: {exc}"
        log.warning("deploying %s failed: %s", model.name, error)
        with session_scope(factory) as session:
            model = _entry(session, model_id)
            model.status, model.status_error = ModelStatus.failed, error[:2000]
        return model
    with session_scope(factory) as session:
        model = _entry(session, model_id)
        if model.live_version != target:
            model.previous_version = model.live_version
            model.live_version = target
        if schema is not None:
            model.input_schema, model.examples = schema, [schema["example"]]
        model.status = ModelStatus.ready
    return model


def undeploy(factory: sessionmaker[Session], predict_models: PredictModels, model_id: str) -> Model:
    """Stop serving an entry: its requests answer 409 until it is deployed again."""
    with session_scope(factory) as session:
        model = _entry(session, model_id)
        model.status, model.status_error = ModelStatus.disabled, None
    predict_models.unload(model_id)
    return model


def rollback(
    factory: sessionmaker[Session], settings: Settings, predict_models: PredictModels, model_id: str
) -> Model:
    """Serve the version from before the last deploy again, pinned until the next deploy: the
    previous live version, or, when the last deploy failed, the live version it did not replace."""
    with factory() as session:
        model = _entry(session, model_id)
    failed = model.status == ModelStatus.failed and model.live_version is not None
    target = model.live_version if failed else model.previous_version
    if target is None:
        raise ConflictError(f"model {model.name} has no previous version to roll back to")
    return deploy(factory, settings, predict_models, model_id, version=target)


def _entry(session: Session, model_id: str) -> Model:
    model = session.get(Model, model_id)
    if model is None:
        raise NotFoundError(f"no model with id {model_id}")
    return model
