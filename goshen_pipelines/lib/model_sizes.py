"""How many bytes a catalog model's live version keeps in the registry's artifact store."""

from __future__ import annotations

from typing import Any

from goshen.db.models import Model


def registered_model_bytes(model: Model) -> int:
    """The size of every artifact of the model's live (else pinned) version; 0 with neither.

    Read through the process's MLflow tracking URI (the MLflowTracking resource sets it), since
    no platform table records a model's size.
    """
    version = model.live_version or model.pinned_version
    if version is None:
        return 0
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(f"models:/{model.registered_model}/{version}")
    return _folder_bytes(repository, None)


def _folder_bytes(repository: Any, path: str | None) -> int:
    total = 0
    for info in repository.list_artifacts(path):
        total += _folder_bytes(repository, info.path) if info.is_dir else (info.file_size or 0)
    return int(total)
