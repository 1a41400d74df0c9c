"""Read-only views of the MLflow registry and the training runs behind its versions, as Polars
frames, for the analysts' notebooks.

The client is the platform's own: `GOSHEN_MLFLOW_TRACKING_URI` (default the embedded tracking
server, `http://GOSHEN_HOST:GOSHEN_MLFLOW_PORT`), for the registry as for the runs. Only
MLflow's read calls are made (search, get, metric history, list and download artifacts): nothing
is logged, tagged, aliased or deleted.

What the training pipelines record, and these functions read back (`goshen_pipelines.lib`):

- each epoch's metrics on the training run, at the epoch's number as step (from 1): `loss`,
  `learning_rate` and `epoch_seconds` for a diffusion model, `loss`, `val_loss`,
  `val_accuracy` (or `val_rmse` and `val_r2`) and `epoch_seconds` for a table model;
- at registration, once, at step 0: the version's metric (`class_match` for the digits
  generator, `val_accuracy` for a classifier, `val_rmse` for a regressor, `final_loss` for a
  generator trained by a job) and `onnx_parity_max_abs_diff`; the version's tags repeat them
  (`goshen.metric_name`, `goshen.metric`, `goshen.checks_passed`), as promotion reads them;
- a generator's sample grid, a PNG under the run's `samples/` folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import polars as pl

from goshen.config import Settings, load_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.store.entities.paged_list import PagedList

# As goshen.registry names them (it is not imported: it needs onnx, which notebooks do not).
METRIC_TAG = "goshen.metric"
METRIC_NAME_TAG = "goshen.metric_name"
PARITY_TAG = "goshen.parity_max_abs_diff"
CHECKS_TAG = "goshen.checks_passed"
PRODUCTION = "production"
SAMPLES_FOLDER = "samples"
# Which way each metric a version is promoted on improves, as the registry assets promote them.
HIGHER_IS_BETTER = {
    "class_match": True,
    "val_accuracy": True,
    "val_rmse": False,
    "final_loss": False,
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_T = TypeVar("_T")

VERSION_SCHEMA = pl.Schema(
    {
        "model": pl.String(),
        "version": pl.Int64(),
        "aliases": pl.List(pl.String()),
        "created_at": pl.Datetime("ms", "UTC"),
        "status": pl.String(),
        "run_id": pl.String(),
        "metric_name": pl.String(),
        "tagged_metric": pl.Float64(),
        "parity_max_abs_diff": pl.Float64(),
        "checks_passed": pl.Boolean(),
        "dataset_id": pl.String(),
    }
)
HISTORY_SCHEMA = pl.Schema(
    {
        "run_id": pl.String(),
        "key": pl.String(),
        "step": pl.Int64(),
        "timestamp": pl.Datetime("ms", "UTC"),
        "value": pl.Float64(),
    }
)
GRID_SCHEMA = pl.Schema({"run_id": pl.String(), "path": pl.String(), "image": pl.Binary()})


def registry_client(settings: Settings | None = None) -> MlflowClient:
    """An MLflow client of the platform's tracking server (default: GOSHEN_* settings)."""
    from mlflow import MlflowClient

    uri = (settings or load_settings()).resolved_mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_versions(client: MlflowClient) -> pl.DataFrame:
    """One row per registered version: its aliases, its run, and the metric its tags carry."""
    aliases: dict[tuple[str, str], list[str]] = {}
    for model in _all_pages(lambda token: client.search_registered_models(page_token=token)):
        for alias, version in model.aliases.items():
            aliases.setdefault((model.name, str(version)), []).append(alias)
    rows = []
    for version in _all_pages(lambda token: client.search_model_versions(page_token=token)):
        tags = version.tags
        checks = tags.get(CHECKS_TAG)
        rows.append(
            {
                "model": version.name,
                "version": int(version.version),
                "aliases": sorted(aliases.get((version.name, str(version.version)), [])),
                "created_at": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC),
                "status": version.status,
                "run_id": version.run_id or None,
                "metric_name": tags.get(METRIC_NAME_TAG),
                "tagged_metric": _number(tags.get(METRIC_TAG)),
                "parity_max_abs_diff": _number(tags.get(PARITY_TAG)),
                "checks_passed": None if checks is None else checks == "true",
                "dataset_id": tags.get("dataset_id"),
            }
        )
    return pl.DataFrame(rows, schema=VERSION_SCHEMA).sort("model", "version")


def metric_history(client: MlflowClient, run_ids: Iterable[str]) -> pl.DataFrame:
    """Every value each run logged of each of its metrics; a run no longer in the tracking
    store has no rows."""
    from mlflow.exceptions import MlflowException

    rows = []
    for run_id in dict.fromkeys(run_ids):
        try:
            keys = client.get_run(run_id).data.metrics
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            continue
        for key in sorted(keys):
            rows += [
                {
                    "run_id": run_id,
                    "key": key,
                    "step": metric.step,
                    "timestamp": datetime.fromtimestamp(metric.timestamp / 1000, UTC),
                    "value": metric.value,
                }
                for metric in client.get_metric_history(run_id, key)
            ]
    return pl.DataFrame(rows, schema=HISTORY_SCHEMA).sort("run_id", "key", "step", "timestamp")


def final_metrics(history: pl.DataFrame) -> pl.DataFrame:
    """Each run's latest value of each metric, as MLflow shows it: the highest step's, the
    last logged of those."""
    return (
        history.sort("run_id", "key", "step", "timestamp")
        .group_by("run_id", "key", maintain_order=True)
        .last()
        .select("run_id", "key", "value")
    )


def sample_grids(client: MlflowClient, run_ids: Iterable[str]) -> pl.DataFrame:
    """The images each run logged under `samples/`, read into memory; none for a run that
    logged none or is no longer in the tracking store."""
    from mlflow.exceptions import MlflowException

    rows = []
    with tempfile.TemporaryDirectory(prefix="goshen-samples-") as workdir:
        for run_id in dict.fromkeys(run_ids):
            try:
                listed = client.list_artifacts(run_id, SAMPLES_FOLDER)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                continue
            for artifact in listed:
                if artifact.is_dir or not artifact.path.lower().endswith(_IMAGE_SUFFIXES):
                    continue
                folder = Path(workdir) / run_id
                folder.mkdir(exist_ok=True)
                local = client.download_artifacts(run_id, artifact.path, str(folder))
                image = Path(local).read_bytes()
                rows.append({"run_id": run_id, "path": artifact.path, "image": image})
    return pl.DataFrame(rows, schema=GRID_SCHEMA)


def _all_pages(search: Callable[[str | None], PagedList[_T]]) -> Iterator[_T]:
    token: str | None = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def _number(value: str | None) -> float | None:
    return None if value is None else float(value)
