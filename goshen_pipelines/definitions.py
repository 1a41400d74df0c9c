"""Goshen's Dagster code location: its assets, checks, jobs, schedules, sensors and resources."""

import dagster as dg

from goshen_pipelines.resources import ArtifactStorage, MLflowTracking, PlatformDatabase

defs = dg.Definitions(
    resources={
        "platform_db": PlatformDatabase(),
        "mlflow": MLflowTracking(),
        "artifact_store": ArtifactStorage(),
    },
)
