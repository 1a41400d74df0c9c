"""The ONNX models one API process serves on /predict: loaded on deploy or first use, one
batcher each, and what every catalog entry's status is in this process (for /readyz).

A reconciler thread (`run_reconciler`, every RECONCILE_SECONDS) first lets the catalog follow the
registry (entries awaiting their alias start serving once it exists: RegistrySync), then keeps
the process in step with the catalog, whichever API replica changed it (`reconcile`): it loads
every public live entry (so /readyz answers ready once they serve), drops entries that were
undeployed, rebuilds those whose live version or batching limits changed, and unloads private
uploads nobody called for IDLE_PRIVATE_SECONDS (they load again on their next request).
/readyz waits for the first pass.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen import registry
from goshen.catalog import metric_label, serving_version
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model, ModelKind, ModelStatus, Visibility
from goshen.runtimes.onnx.model import OnnxModel
from serving.catalog.registry_sync import RegistrySync
from serving.http.metrics import ApiMetrics
from serving.predict.batching import DynamicBatcher

log = logging.getLogger(__name__)
# A version that failed to load is tried again at most this often (requests answer 503 meanwhile).
LOAD_RETRY_SECONDS = 10
RECONCILE_SECONDS = 5.0
IDLE_PRIVATE_SECONDS = 600.0


class ModelLoadError(RuntimeError):
    """A model version could not be loaded (or failed to moments ago); the message says why."""


@dataclass
class LoadedModel:
    """A model version this process serves."""

    model_id: str
    name: str
    version: str
    onnx: OnnxModel
    batcher: DynamicBatcher
    limits: tuple[int, float]  # (max rows, max wait seconds) the batcher was built with
    last_used: float = field(default_factory=time.monotonic)  # set by /predict


@dataclass(frozen=True)
class ModelHealth:
    """One catalog entry as this process sees it."""

    name: str
    loaded_version: str | None
    last_error: str | None


class PredictModels:
    """Loaded ONNX models by catalog id; a version change loads the new one and drops the old
    (a deploy prepares the new one first, so the old one serves until the switch)."""

    def __init__(
        self, settings: Settings, registry_sync: RegistrySync, metrics: ApiMetrics | None = None
    ) -> None:
        self.settings = settings
        self.registry_sync = registry_sync
        self.metrics = metrics
        self.first_pass = threading.Event()  # set once the reconciler's first pass has run
        self.cache_dir = settings.home_dir / "models"
        self._loaded: dict[str, LoadedModel] = {}
        self._errors: dict[str, tuple[str, str]] = {}  # model id -> (name, last error)
        self._failures: dict[tuple[str, str], tuple[float, str]] = {}  # (id, version) -> when, why
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # One thread per model call at a time is enough: each session uses the cores itself.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="predict")

    def loaded(self, model: Model, version: str) -> LoadedModel | None:
        found = self._loaded.get(model.id)
        return found if found is not None and found.version == version else None

    def load(self, model: Model, version: str) -> LoadedModel:
        """The entry's `version`, loaded once however many requests ask at the same time.

        A version that failed to load is not tried again for LOAD_RETRY_SECONDS (ModelLoadError
        at once). Blocking (download, session build): call it from a thread.
        """
        with self._lock_for(model.id):
            found = self.loaded(model, version)
            if found is not None:
                return found
            failed = self._failures.get((model.id, version))
            if failed is not None and time.monotonic() - failed[0] < LOAD_RETRY_SECONDS:
                raise ModelLoadError(failed[1])
            try:
                loaded = self._build(model, version)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                self._errors[model.id] = (model.name, error)
                self._failures[(model.id, version)] = (time.monotonic(), error)
                raise ModelLoadError(error) from exc
            self._serve(loaded)
            return loaded

    def prepare(self, model: Model, version: str) -> LoadedModel:
        """Load `version` of an entry beside the version it serves, which keeps serving: a deploy
        `install`s it once the catalog names it live. ModelLoadError if it does not load or
        answer its example input. Blocking: call it from a thread."""
        try:
            return self._build(model, version)
        except Exception as exc:
            raise ModelLoadError(f"{type(exc).__name__}: {exc}") from exc

    def install(self, loaded: LoadedModel) -> None:
        """Serve a prepared version from now on, in place of the entry's current one."""
        with self._lock_for(loaded.model_id):
            self._serve(loaded)

    def _serve(self, loaded: LoadedModel) -> None:
        self._loaded[loaded.model_id] = loaded
        self._errors.pop(loaded.model_id, None)
        self._failures.pop((loaded.model_id, loaded.version), None)
        log.info("serving %s v%s on %s", loaded.name, loaded.version, loaded.onnx.device.name)

    def _build(self, model: Model, version: str) -> LoadedModel:
        """Download and load a version, run its example input and give it a batcher."""
        onnx = OnnxModel.from_folder(self._download(model, version))
        call_seconds = _run_example(onnx, self.settings.predict_max_rows)
        limits = self.limits(model)
        batcher = DynamicBatcher(
            onnx.run,
            max_rows=limits[0],
            max_wait=limits[1],
            batchable=onnx.batchable,
            executor=self._executor,
            call_seconds=call_seconds,
            on_batch=(
                self.metrics.predict_batch.labels(metric_label(model.name, model.owner_id)).observe
                if self.metrics is not None
                else None
            ),
        )
        return LoadedModel(model.id, model.name, version, onnx, batcher, limits)

    def limits(self, model: Model) -> tuple[int, float]:
        """The entry's batching limits (max rows, max wait seconds), defaults from the settings."""
        wait_ms = model.max_wait_ms
        if wait_ms is None:
            wait_ms = self.settings.predict_max_wait_ms
        return (model.max_batch_size or self.settings.predict_max_batch_size, wait_ms / 1000)

    def reconcile(self, reads: sessionmaker[Session], writes: sessionmaker[Session]) -> None:
        """One pass of the reconciler (see the module's docstring); the catalog is read through
        `reads` (no write lock on SQLite)."""
        with reads() as session:
            entries = session.scalars(select(Model).where(Model.kind == ModelKind.onnx)).all()
            for entry in entries:
                session.expunge(entry)
        live = {e.id: e for e in entries if e.status == ModelStatus.ready and serving_version(e)}
        now = time.monotonic()
        for model_id, loaded in list(self._loaded.items()):
            live_entry = live.get(model_id)
            idle = now - loaded.last_used > IDLE_PRIVATE_SECONDS
            if (
                live_entry is None
                or loaded.version != serving_version(live_entry)
                or loaded.limits != self.limits(live_entry)
                or (live_entry.visibility != Visibility.public and idle)
            ):
                self.unload(model_id)
        for entry in live.values():
            version = serving_version(entry)
            if entry.visibility == Visibility.public and entry.id not in self._loaded and version:
                try:
                    self._load_published(writes, entry, version)
                except ModelLoadError as exc:
                    log.warning("could not load %s v%s: %s", entry.name, version, exc)

    def _load_published(self, factory: sessionmaker[Session], model: Model, version: str) -> None:
        """Load a public entry; one that publishes no input schema yet (a built-in one) gets
        its graph's."""
        loaded = self.load(model, version)
        if not model.input_schema:
            schema = loaded.onnx.public_schema()
            with session_scope(factory) as session:
                session.execute(
                    update(Model)
                    .where(Model.id == model.id)
                    .values(input_schema=schema, examples=[schema["example"]])
                )

    def run_reconciler(
        self, reads: sessionmaker[Session], writes: sessionmaker[Session], stop: threading.Event
    ) -> None:
        """Follow the registry and the catalog now, then every RECONCILE_SECONDS until `stop` is
        set (a thread); `first_pass` is set once the first pass ran, whatever it found."""
        steps = (
            (self.registry_sync.run, "the catalog with the registry"),
            (self.reconcile, "the served models with the catalog"),
        )
        while True:
            for step, what in steps:
                try:
                    step(reads, writes)
                except Exception:
                    log.exception("reconciling %s failed", what)
            self.first_pass.set()
            if stop.wait(RECONCILE_SECONDS):
                return

    def unload(self, model_id: str) -> None:
        self._loaded.pop(model_id, None)

    def loaded_version(self, model_id: str) -> str | None:
        found = self._loaded.get(model_id)
        return found.version if found is not None else None

    def health(self) -> list[ModelHealth]:
        """Every entry this process loaded or failed to load."""
        # Copies first (atomic under the GIL): loads in other threads change the originals.
        loaded, errors = dict(self._loaded), dict(self._errors)
        names = {entry.model_id: entry.name for entry in loaded.values()}
        names.update({model_id: name for model_id, (name, _) in errors.items()})
        return [
            ModelHealth(
                name,
                loaded[model_id].version if model_id in loaded else None,
                errors.get(model_id, (name, None))[1],
            )
            for model_id, name in sorted(names.items(), key=lambda item: item[1])
        ]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loaded.clear()

    def _download(self, model: Model, version: str) -> Path:
        destination = self.cache_dir / model.registered_model / version
        downloaded = registry.download_version(
            model.registered_model,
            version,
            destination,
            timeout=self.settings.dependency_timeout_seconds,
        )
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
