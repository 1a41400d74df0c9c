"""The MLflow tracking server and model registry as a Dagster resource."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from goshen.config import load_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


class MLflowTracking(dg.ConfigurableResource["MLflowTracking"]):
    """Where training assets log runs and register models.

    Left unset, `tracking_uri` is read from GOSHEN_MLFLOW_TRACKING_URI when a run starts, falling
    back to the server `goshen up` runs on GOSHEN_HOST:GOSHEN_MLFLOW_PORT.
    """

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; unset means GOSHEN_MLFLOW_TRACKING_URI or goshen up's.",
    )

    @property
    def uri(self) -> str:
        return self.tracking_uri or load_settings().resolved_mlflow_tracking_uri

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # mlflow is imported per run, not at load time: it takes seconds to import.
        import mlflow

        # mlflow.start_run() and log_model() in asset code use the process-wide URI.
        mlflow.set_tracking_uri(self.uri)
        # The registry follows explicitly: an earlier registry URI in this process must not win.
        mlflow.set_registry_uri(self.uri)

    def client(self) -> MlflowClient:
        """A client for runs and the model registry on this tracking server."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
