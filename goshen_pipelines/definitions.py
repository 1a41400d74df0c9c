"""Goshen's Dagster code location: its assets, checks, jobs, sensors and resources."""

import dagster as dg

from goshen_pipelines.defs.billing import assets as billing
from goshen_pipelines.defs.billing import checks as billing_checks
from goshen_pipelines.defs.billing import schedules as billing_schedules
from goshen_pipelines.defs.datasets import assets as datasets
from goshen_pipelines.defs.datasets import sensors as dataset_sensors
from goshen_pipelines.defs.jobs import digits_models_job, training_run_job
from goshen_pipelines.defs.registry import assets as registry
from goshen_pipelines.defs.training import assets as training
from goshen_pipelines.defs.training import sensors as training_sensors
from goshen_pipelines.progress import progress_logger
from goshen_pipelines.resources import ArtifactStorage, MLflowTracking, PlatformDatabase
from goshen_pipelines.resources.io import AssetStorage

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([datasets, training, registry, billing]),
    asset_checks=dg.load_asset_checks_from_modules([billing_checks]),
    jobs=[
        digits_models_job,
        training_run_job,
        billing_schedules.billing_daily_job,
        billing_schedules.invoices_job,
    ],
    schedules=[billing_schedules.billing_daily_schedule, billing_schedules.invoices_schedule],
    sensors=[
        datasets.uploaded_dataset_sensor,
        dataset_sensors.dataset_run_failure_sensor,
        dataset_sensors.dataset_run_canceled_sensor,
        training_sensors.training_job_sensor,
        training_sensors.training_cancel_sensor,
        training_sensors.training_failure_sensor,
        training_sensors.training_canceled_sensor,
    ],
    loggers={"progress": progress_logger},
    resources={
        "platform_db": PlatformDatabase(),
        "mlflow": MLflowTracking(),
        "artifact_store": ArtifactStorage(),
        "io_manager": AssetStorage(),
    },
)
