"""One MLflow run per training materialization: tags, params, per-epoch metrics, sample grids."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
from PIL import Image

Report = Callable[[str, dict[str, Any]], None]


@contextmanager
def tracked_run(
    experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any]
) -> Iterator[str]:
    """Start a run in `experiment`; yields its id."""
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params({key: str(value) for key, value in params.items()})
        yield run.info.run_id


def epoch_logger(
    epochs: int, report: Report | None = None
) -> Callable[[int, dict[str, float]], None]:
    """An `on_epoch_end` callback: metrics to the active MLflow run, a line to `report`."""

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch)
        if report is not None:
            shown = " ".join(f"{name}={value:.4f}" for name, value in sorted(metrics.items()))
            report(f"epoch {epoch}/{epochs} {shown}", {"epoch": epoch, "epochs": epochs, **metrics})

    return on_epoch_end


def log_sample_grid(png: bytes, name: str = "samples.png") -> None:
    mlflow.log_image(Image.open(io.BytesIO(png)), artifact_file=f"samples/{name}")


def run_url(tracking_uri: str, run_id: str) -> str:
    """A link to the run in the MLflow UI."""
    run = mlflow.get_run(run_id)
    return f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def markdown_image(png: bytes, alt: str) -> str:
    """An inline image for Dagster's metadata panel."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
