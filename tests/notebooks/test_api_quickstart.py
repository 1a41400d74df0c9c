"""notebooks/api_quickstart.py runs headless against a real platform and shows what its calls
did.

Real: uvicorn serving the API on PostgreSQL, a worker running a tiny random-weights digits
model from a real MLflow registry, an ONNX classifier deployed through the admin API, the SDK
the notebook drives, and the dataset's ingestion (the `uploaded_dataset` Dagster asset, as the
`uploaded_dataset_sensor` requests it). Standing in: for the Dagster daemon, a thread that ticks
the sensor and materializes the runs it asks for on an ephemeral instance; for the training
sensor, nothing, so the training job the notebook submits stays queued until it cancels it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import Model, TrainingJob, TrainingStatus
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel, deploy_classifier
from tests.fixtures.notebooks import run_notebook

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])
NOTEBOOK = "api_quickstart"
CLASSIFIER = "qs-digits-classifier"
IMAGE_PRICE = 1000  # make_model's price an image
REQUEST_PRICE = 250  # deploy_classifier's price a request


@contextmanager
def ingesting_uploads(settings: Settings) -> Iterator[None]:
    """What the Dagster daemon does for uploaded datasets, in a thread for the block: tick
    `uploaded_dataset_sensor` and materialize `uploaded_dataset` for each run it requests. What
    went wrong in the thread is raised when the block ends."""
    import dagster as dg

    from goshen_pipelines.defs.datasets.assets import uploaded_dataset, uploaded_dataset_sensor
    from goshen_pipelines.resources import ArtifactStorage, PlatformDatabase

    resources = {
        "platform_db": PlatformDatabase(database_url=settings.resolved_database_url),
        "artifact_store": ArtifactStorage(),
    }
    instance = dg.DagsterInstance.ephemeral()
    stop = threading.Event()

    def daemon() -> None:
        cursor = None
        while not stop.wait(0.2):
            with dg.build_sensor_context(
                instance=instance, resources=resources, cursor=cursor
            ) as context:
                result = uploaded_dataset_sensor(context)
            cursor = result.cursor or cursor
            for request in result.run_requests or []:
                instance.add_dynamic_partitions("dataset", [request.partition_key])
                dg.materialize(
                    [uploaded_dataset],
                    partition_key=request.partition_key,
                    instance=instance,
                    resources=resources,
                )

    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(daemon)
        try:
            yield
        finally:
            stop.set()
        running.result(timeout=30)


@pytest.fixture
def platform(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    start_worker: Callable[..., threading.Event],
    register_classifier: Callable[..., RegisteredModel],
    admin: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    """The API, a worker, the deployed classifier, and uploads ingested as Dagster would."""
    register_classifier(CLASSIFIER)
    monkeypatch.setenv("GOSHEN_HOME", str(serving_settings.home_dir))  # the artifact store's
    with run_api(serving_settings) as served, ingesting_uploads(served):
        with httpx.Client(base_url=served.api_url, timeout=120) as api:
            deploy_classifier(api, admin.headers, CLASSIFIER)
        start_worker(step_seconds=0.01)
        yield served


def _use(
    platform: Settings, developer: Account, generator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the notebook at the test's platform, as a developer's environment would."""
    monkeypatch.setenv("GOSHEN_API_URL", platform.api_url)
    monkeypatch.setenv("GOSHEN_API_KEY", developer.key)
    monkeypatch.setenv("GOSHEN_QUICKSTART_GENERATOR", generator)
    monkeypatch.setenv("GOSHEN_QUICKSTART_CLASSIFIER", CLASSIFIER)
    monkeypatch.setenv("GOSHEN_QUICKSTART_DATASET_TIMEOUT", "20")


def test_the_notebook_generates_predicts_uploads_trains_and_adds_up_the_usage(
    platform: Settings,
    developer: Account,
    digits_model: Model,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _use(platform, developer, digits_model.name, monkeypatch)

    defs = run_notebook(NOTEBOOK)

    job = defs["job"]
    assert job.status == "succeeded" and len(job.images) == defs["NUM_IMAGES"] == 4
    # The pixels the notebook read, against the images the API serves.
    downloaded = [httpx.get(image.url).content for image in job.images]
    decoded = [np.asarray(Image.open(io.BytesIO(png))).tolist() for png in downloaded]
    assert defs["pixels"] == decoded and all(len(rows) == 8 for rows in decoded)
    assert defs["after_run"].balance_micros == defs["before_run"].balance_micros - 4 * IMAGE_PRICE

    steps = defs["STEPS"]
    assert defs["steps"] == list(range(1, steps + 1))
    kinds = defs["event_table"]["kind"].to_list()
    assert kinds[0] == "status" and kinds[-1] == "done" and kinds.count("progress") == steps
    assert defs["streamed"].status == "succeeded" and defs["streamed"].cost_micros == IMAGE_PRICE

    prediction = defs["prediction"]
    assert prediction.labels is not None and len(prediction.labels) == 4
    assert all(len(row) == 64 and 0 <= min(row) <= max(row) <= 1 for row in defs["features"])

    size = defs["table_bytes"]
    assert defs["uploaded"].status == "uploaded" and defs["sent"][-1] == (size, size)
    dataset = defs["dataset"]
    assert dataset.status == "ready" and dataset.id == defs["uploaded"].id
    assert dataset.progress is not None
    assert dataset.progress["done"] == dataset.progress["total"] == 200

    training, ended = defs["training"], defs["training_ended"]
    assert training.status == "queued" and training.dataset_id == dataset.id
    # Its time limit: 200 rows x 5 epochs x 0.0002 s, twice over (1 s), plus 300 s to start.
    assert training.estimated_cost_micros == 301 * platform.training_price_micros_per_second
    assert ended.status == "canceled" and not ended.cost_micros
    with sessions() as session:
        row = session.get(TrainingJob, training.id)
        assert row is not None and row.status == TrainingStatus.canceled

    usage = defs["usage"]
    assert usage.totals.images == 5 and usage.totals.requests == 1
    assert usage.totals.cost_micros == 5 * IMAGE_PRICE + REQUEST_PRICE
    by_model = {row["model"]: row["cost_micros"] for row in defs["usage_by_model"].to_dicts()}
    assert by_model == {digits_model.name: 5 * IMAGE_PRICE, CLASSIFIER: REQUEST_PRICE}


def test_the_notebook_stops_when_the_key_cannot_call_the_models(
    live_api: Settings, developer: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(live_api, developer, "no-such-generator", monkeypatch)

    with pytest.raises(AssertionError, match="cannot call a model named 'no-such-generator'"):
        run_notebook(NOTEBOOK)
