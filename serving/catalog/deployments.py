"""Catalog entries from the MLflow registry: what a registered version is, and deploying it.

Deploy resolves the entry's alias (or pinned version) to a version and prepares it beside the
one it serves: loaded in this process and probed with its own example input. Only then does the
entry switch (ready, serving that version; the one it replaces kept as `previous_version` for
rollback). A deploy that fails leaves the live version serving and records why in
`status_error`; an entry that served nothing ends `failed`, and reads `deploying` meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model, ModelKind, ModelRuntime, ModelStatus
from goshen.errors import ConflictError, GoshenError, InvalidInputError, NotFoundError
from goshen.runtimes.onnx.model import OnnxModel
from serving.predict.models import LoadedModel, ModelLoadError, PredictModels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionFacts:
    """What a registered version is, as the catalog records it."""

    version: str
    kind: ModelKind
    runtime: ModelRuntime
    input_schema: dict[str, Any]
    examples: list[Any]


def resolve_version(
    settings: Settings, registered_model: str, *, version: str | None, alias: str | None
) -> str:
    """The version an entry serves next: `version` (pinned) if given, else `alias`'s. What the
    registry lacks is named: a registered model (NotFoundError), or the version or alias
    (InvalidInputError on that field)."""
    uri, timeout = settings.resolved_mlflow_tracking_uri, settings.dependency_timeout_seconds
    if version is not None:
        if registry.version_exists(uri, registered_model, version, timeout):
            return version
        found, field, missing = None, "version", f"version {version} of {registered_model}"
    elif alias is not None:
        found = registry.version_for_alias(uri, registered_model, alias, timeout)
        field, missing = "alias", f"the alias {alias!r} of {registered_model}"
    else:
        raise InvalidInputError("give an alias or a version to serve", field="alias")
    if found is not None:
        return found
    if not registry.registered_model_exists(uri, registered_model, timeout):
        raise NotFoundError(f"no registered model {registered_model!r} in the MLflow registry")
    raise InvalidInputError(f"{missing} does not exist in the MLflow registry", field=field)


def download(settings: Settings, registered_model: str, version: str) -> Path:
    destination = settings.home_dir / "models" / registered_model / version
    return registry.download_version(
        registered_model, version, destination, timeout=settings.dependency_timeout_seconds
    )


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
) -> LoadedModel | None:
    """Prepare `version` as this entry serves it, beside the version it serves now: an ONNX
    model loads and answers its example input (the loaded model is returned, to be installed
    once the catalog says it is live); an image generator's version must still be of the entry's
    runtime."""
    if model.runtime == ModelRuntime.onnx:
        return predict_models.prepare(model, version)
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
    """Deploy an entry (optionally pinning `version` or following `alias` from now on).

    The entry switches only once the new version is prepared; a deploy that fails changes
    nothing it serves, records why in `status_error` and raises a GoshenError naming it.
    """
    with session_scope(factory) as session:
        model = _entry(session, model_id)
        serving = model.status == ModelStatus.ready and catalog.serving_version(model) is not None
        if not serving:
            model.status = ModelStatus.deploying
    if version is not None:
        pinned, followed = version, model.alias
    elif alias is not None:
        pinned, followed = None, alias
    else:
        pinned, followed = model.pinned_version, model.alias
    try:
        target = resolve_version(settings, model.registered_model, version=pinned, alias=followed)
        prepared = probe(settings, predict_models, model, target)
    except Exception as exc:  # a failed deploy is recorded, then answered
        failure = _failure(exc, model, f"version {pinned}" if pinned else f"alias {followed!r}")
        log.warning("deploying %s failed: %s", model.name, failure)
        with session_scope(factory) as session:
            model = _entry(session, model_id)
            at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            model.status_error = f"{at}: {failure}"[:2000]
            if not serving:
                model.status = ModelStatus.failed
        if failure is exc:
            raise
        raise failure from exc
    with session_scope(factory) as session:
        model = _entry(session, model_id)
        model.pinned_version, model.alias = pinned, followed
        if model.live_version != target:
            model.previous_version = model.live_version
            model.live_version = target
        if prepared is not None:
            schema = prepared.onnx.public_schema()
            model.input_schema, model.examples = schema, [schema["example"]]
        catalog.publish_version(session, model)  # a trained generator's classes, per version
        model.status, model.status_error = ModelStatus.ready, None
    if prepared is not None:
        predict_models.install(prepared)
    return model


def _failure(exc: Exception, model: Model, asked: str) -> GoshenError:
    """What a failed deploy answers: the registry's or the check's own error where it says what
    to fix; a conflict when the registry lost what the entry names, or the version did not load
    or answer its example."""
    if isinstance(exc, GoshenError) and not isinstance(exc, NotFoundError):
        return exc
    if isinstance(exc, NotFoundError):
        return ConflictError(f"deploying {asked} of {model.name} failed: {exc}")
    detail = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
    return ConflictError(
        f"{asked} of {model.registered_model} did not load or answer its example input: {detail}"
    )


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
    previous live version, or, for a `failed` entry (a deploy failed while it served nothing),
    the live version it last served."""
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
