"""Dagster resources: the platform database, the MLflow tracking server and the artifact store."""

from goshen_pipelines.resources.artifacts import ArtifactStorage
from goshen_pipelines.resources.platform_db import PlatformDatabase
from goshen_pipelines.resources.tracking import MLflowTracking

__all__ = ["ArtifactStorage", "MLflowTracking", "PlatformDatabase"]
