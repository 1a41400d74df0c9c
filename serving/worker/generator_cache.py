"""Where a worker's models come from, and the bounded cache of the generators it keeps loaded."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from goshen import registry
from goshen.config import Settings
from goshen.db.models import Model, ModelRuntime
from goshen.errors import ConflictError
from goshen.runtimes.base import ImageGenerator
from goshen.runtimes.generators import load_generator

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    """Resolves a catalog entry's live version and loads a version as a generator."""

    def resolve(self, model: Model) -> str: ...

    def load(self, model: Model, version: str) -> ImageGenerator: ...


class RegistrySource:
    """Versions from the MLflow registry, downloaded once per host under GOSHEN_HOME/models.

    A registry that does not answer within GOSHEN_DEPENDENCY_TIMEOUT_SECONDS raises
    RegistryUnavailableError (a missing version: ConflictError or NotFoundError)."""

    def __init__(self, settings: Settings) -> None:
        import mlflow

        self.settings = settings
        self.cache_dir = settings.home_dir / "models"
        mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
        mlflow.set_registry_uri(settings.resolved_mlflow_tracking_uri)

    def resolve(self, model: Model) -> str:
        if model.pinned_version:
            return model.pinned_version
        if model.alias is None:
            raise ConflictError(f"model {model.name} names neither an alias nor a version")
        uri = self.settings.resolved_mlflow_tracking_uri
        timeout = self.settings.dependency_timeout_seconds
        version = registry.version_for_alias(uri, model.registered_model, model.alias, timeout)
        if version is None:
            raise ConflictError(
                f"{model.registered_model}@{model.alias} does not exist in the MLflow registry"
            )
        return version

    def load(self, model: Model, version: str) -> ImageGenerator:
        folder = registry.download_version(
            model.registered_model,
            version,
            self.cache_dir / model.registered_model / version,
            timeout=self.settings.dependency_timeout_seconds,
        )
        if model.runtime == ModelRuntime.diffusers:
            folder = registry.pipeline_folder(folder)
        else:
            folder = registry.model_folder(folder)
        return load_generator(model.runtime, folder, self.settings.diffusion_engine)


class GeneratorCache:
    """Loaded generators by (model id, version), least recently used unloaded first.

    `on_change` runs after every load (and the unloads it causes), outside the lock: the worker
    reports what it holds at once, so claims elsewhere see it before its next heartbeat."""

    def __init__(
        self,
        source: ModelSource,
        capacity: int,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.capacity = capacity
        self.on_change = on_change
        self._loaded: OrderedDict[tuple[str, str], tuple[str, ImageGenerator]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: Model, version: str) -> ImageGenerator:
        key = (model.id, version)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key][1]
        generator = self.source.load(model, version)
        with self._lock:
            self._loaded[key] = (model.name, generator)
            while len(self._loaded) > self.capacity:
                (_, old_version), (name, old) = self._loaded.popitem(last=False)
                log.info(
                    "unloading %s v%s (generator cache holds %d)", name, old_version, self.capacity
                )
                old.close()
        if self.on_change is not None:
            self.on_change()
        return generator

    def loaded(self) -> list[dict[str, str]]:
        """What is loaded, for the workers table."""
        with self._lock:
            return [
                {"model": name, "model_id": model_id, "version": version}
                for (model_id, version), (name, _) in self._loaded.items()
            ]

    def model_ids(self) -> frozenset[str]:
        """The catalog ids of the models loaded (any version): what claims prefer."""
        with self._lock:
            return frozenset(model_id for model_id, _ in self._loaded)

    def close(self) -> None:
        with self._lock:
            for _, generator in self._loaded.values():
                generator.close()
            self._loaded.clear()
