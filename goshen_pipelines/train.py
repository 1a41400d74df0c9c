"""`goshen train digits`: build the built-in models end to end, with a progress display.

The run goes to the Dagster instance under GOSHEN_DAGSTER_HOME, so it shows in the Dagster UI
next to runs launched there; MLflow is the platform's tracking server, started for the run when
it is not already up.
"""

import logging
import os
from typing import Any

import dagster as dg

from goshen.config import Settings
from goshen.dagster_runs import prepare_dagster_home
from goshen.tracking import running_tracking_server
from goshen_pipelines.definitions import defs
from goshen_pipelines.defs.jobs import digits_models_job

PROMOTIONS = ("digits_classifier_production", "digits_diffusion_production")
# Their INFO lines (accelerator banners, "View run at ...") would bury the progress display.
CHATTY_LOGGERS = ("lightning", "lightning.pytorch", "mlflow", "alembic")


def run_digits_job(
    settings: Settings, run_config: dict[str, Any] | None = None
) -> dg.ExecuteInProcessResult:
    """Run the digits job in this process on the platform's Dagster instance."""
    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    config = {"loggers": {"progress": {}}, **(run_config or {})}
    with running_tracking_server(settings), dg.DagsterInstance.get() as instance:
        job = defs.resolve_job_def(digits_models_job.name)
        return job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)


def train_digits(settings: Settings) -> int:
    """The `goshen train digits` command: 0 when every step and check succeeded."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    result = run_digits_job(settings)
    for asset in PROMOTIONS:
        for event in result.asset_materializations_for_node(asset):
            meta = {key: value.value for key, value in event.metadata.items()}
            print(f"{meta['live_model_uri']}: v{meta['live_version']} ({meta['reason']})")
    if not result.success:
        print(f"goshen: the run failed; see Dagster run {result.run_id} in the Dagster UI")
        return 1
    return 0
