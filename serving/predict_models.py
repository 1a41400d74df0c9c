"""The ONNX models one API process serves on /predict: loaded on deploy or first use, one
batcher each, and what every catalog entry's status is in this process (for /readyz)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen import registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model, ModelKind, ModelStatus
from goshen.runtimes.onnx_models import OnnxModel
from serving.batcher import DynamicBatcher
from serving.metrics import ApiMetrics

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model version this process serves."""

    model_id: str
    name: str
    version: str
    onnx: OnnxModel
    batcher: DynamicBatcher


@dataclass(frozen=True)
class ModelHealth:
    """One catalog entry as this process sees it."""

    name: str
    loaded_version: str | None
    last_error: str | None


class PredictModels:
    """Loaded ONNX models by catalog id; a version change loads the new one and drops the old."""

    def __init__(self, settings: Settings, metrics: ApiMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache_dir = settings.home_dir / "models"
        self._loaded: dict[str, LoadedModel] = {}
        self._errors: dict[str, tuple[str, str]] = {}  # model id -> (name, last error)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # One thread per model call at a time is enough: each session uses the cores itself.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="predict")

    def loaded(self, model: Model, version: str) -> LoadedModel | None:
        found = self._loaded.get(model.id)
        return found if found is not None and found.version == version else None

    def load(self, model: Model, version: str) -> LoadedModel:
        """The entry's `version`, loaded once however many requests ask at the same time.

        Blocking (download, session build): call it from a thread.
        """
        with self._lock_for(model.id):
            found = self.loaded(model, version)
            if found is not None:
                return found
            try:
                onnx = OnnxModel.from_folder(self._download(model, version))
                call_seconds = _run_example(onnx, self.settings.predict_max_rows)
            except Exception as exc:
                self._errors[model.id] = (model.name, f"{type(exc).__name__}: {exc}")
                raise
            batcher = DynamicBatcher(
                onnx.run,
                max_rows=model.max_batch_size or self.settings.predict_max_batch_size,
                max_wait=(
                    model.max_wait_ms
                    if model.max_wait_ms is not None
                    else self.settings.predict_max_wait_ms
                )
                / 1000,
                batchable=onnx.batchable,
                executor=self._executor,
                call_seconds=call_seconds,
                on_batch=(
                    self.metrics.predict_batch.labels(model.name).observe
                    if self.metrics is not None
                    else None
                ),
            )
            loaded = LoadedModel(model.id, model.name, version, onnx, batcher)
            self._loaded[model.id] = loaded
            self._errors.pop(model.id, None)
            log.info("serving %s v%s on %s", model.name, version, onnx.device.name)
            return loaded

    def unload(self, model_id: str) -> None:
        self._loaded.pop(model_id, None)

    def loaded_version(self, model_id: str) -> str | None:
        found = self._loaded.get(model_id)
        return found.version if found is not None else None

    def health(self) -> list[ModelHealth]:
        """Every entry this process loaded or failed to load."""
        names = {loaded.model_id: loaded.name for loaded in self._loaded.values()}
        names.update({model_id: name for model_id, (name, _) in self._errors.items()})
        return [
            ModelHealth(
                name,
                self._loaded[model_id].version if model_id in self._loaded else None,
                self._errors.get(model_id, (name, None))[1],
            )
            for model_id, name in sorted(names.items(), key=lambda item: item[1])
        ]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loaded.clear()

    def _download(self, model: Model, version: str) -> Path:
        destination = self.cache_dir / model.registered_model / version
        downloaded = registry.download_version(model.registered_model, version, destination)
        return registry.model_folder(downloaded)

    def _lock_for(self, model_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(model_id, threading.Lock())


def _run_example(onnx: OnnxModel, max_rows: int) -> float:
    """Run the model's example input (a load that cannot answer it fails here, not on the first
    request); the seconds of the second call, warm, tell the batcher where calls should run."""
    feeds = onnx.check_inputs(onnx.public_schema()["example"]["inputs"], max_rows=max_rows)
    onnx.run(feeds)
    started = time.perf_counter()
    onnx.run(feeds)
    return time.perf_counter() - started


def warm_up(factory: sessionmaker[Session], models: PredictModels) -> None:
    """Load every live ONNX entry, so /readyz answers ready once they all serve; an entry
    that publishes no input schema yet (a built-in one) gets its graph's."""
    with factory() as session:
        live = session.scalars(
            select(Model).where(Model.kind == ModelKind.onnx, Model.status == ModelStatus.ready)
        ).all()
        for model in live:
            session.expunge(model)
    for model in live:
        version = model.pinned_version or model.live_version
        if version is None:
            continue
        try:
            loaded = models.load(model, version)
        except Exception:
            log.exception("could not load %s v%s", model.name, version)
            continue
        if not model.input_schema:
            schema = loaded.onnx.public_schema()
            with session_scope(factory) as session:
                session.execute(
                    update(Model)
                    .where(Model.id == model.id)
                    .values(input_schema=schema, examples=[schema["example"]])
                )


def live_models_loaded(factory: sessionmaker[Session], models: PredictModels) -> dict[str, Any]:
    """The readiness check: every live ONNX entry is loaded here at its live version."""
    with factory() as session:
        live = session.execute(
            select(Model.id, Model.name, Model.pinned_version, Model.live_version).where(
                Model.kind == ModelKind.onnx, Model.status == ModelStatus.ready
            )
        ).all()
    health = {entry.name: entry for entry in models.health()}
    report = []
    for model_id, name, pinned, live_version in live:
        wanted = pinned or live_version
        seen = health.get(name)
        loaded = models.loaded_version(model_id)
        report.append(
            {
                "name": name,
                "live_version": wanted,
                "loaded_version": loaded,
                "last_error": seen.last_error if seen else None,
            }
        )
    missing = [
        entry["name"] for entry in report if entry["loaded_version"] != entry["live_version"]
    ]
    error = f"not loaded yet: {', '.join(missing)}" if missing else None
    return {"ok": not missing, "error": error, "models": report}
