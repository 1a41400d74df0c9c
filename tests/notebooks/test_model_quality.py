"""notebooks/model_quality.py runs headless against the platform's MLflow tracking server, where
a generator and a classifier have two versions each, trained and registered as the pipelines
record them, and compares their versions, training curves and sample grids."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from goshen.config import Settings
from tests.fixtures.notebooks import run_notebook, use_home

NOTEBOOK = "model_quality"


@dataclass(frozen=True)
class Training:
    """A run's per-epoch metrics, and the version registered from it."""

    role: str  # "generator" or "classifier": which of the test's two models
    metric_name: str
    metric: float
    epochs: list[dict[str, float]]
    parity_max_abs_diff: float = 1e-6
    grid: bytes | None = None
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Registered:
    """The test's two registered models, by role, and each training's run id, in order."""

    names: dict[str, str]
    run_ids: list[str]


def _grid() -> bytes:
    """A 3x2 'sample grid', one colour a pixel, so that what the notebook shows can be compared."""
    image = Image.new("RGB", (3, 2))
    image.putdata([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (255, 255, 255)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


GRID = _grid()
# Version 2 of the generator reads better but failed its parity check, so version 1 stays live;
# version 2 of the classifier is worse, so version 1 stays live and is its best. Versions are
# numbered in this order, per model.
TRAININGS = [
    Training(
        "generator",
        "class_match",
        0.62,
        [{"loss": 0.9, "learning_rate": 1e-3}, {"loss": 0.6, "learning_rate": 5e-4}],
        aliases=["production"],
    ),
    Training(
        "generator",
        "class_match",
        0.88,
        [{"loss": 0.8, "learning_rate": 1e-3}] * 2 + [{"loss": 0.3, "learning_rate": 2e-4}],
        parity_max_abs_diff=0.5,
        grid=GRID,
    ),
    Training(
        "classifier",
        "val_accuracy",
        0.93,
        [
            {"loss": 1.2, "val_loss": 1.0, "val_accuracy": 0.71},
            {"loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9},
            {"loss": 0.2, "val_loss": 0.3, "val_accuracy": 0.93},
        ],
        aliases=["production", "previous"],
    ),
    Training(
        "classifier",
        "val_accuracy",
        0.8,
        [
            {"loss": 1.1, "val_loss": 1.1, "val_accuracy": 0.6},
            {"loss": 0.7, "val_loss": 0.6, "val_accuracy": 0.8},
        ],
    ),
]
VERSIONS = [1, 2, 1, 2]


@pytest.fixture
def registered(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Registered]:
    """TRAININGS run and registered in the session's tracking server, under names of this
    test's own (the server is shared); GOSHEN_* name that server, as an analyst's settings do."""
    import mlflow

    settings = Settings(_env_file=None, home=tmp_path / "home", mlflow_tracking_uri=mlflow_server)
    use_home(settings, monkeypatch)
    monkeypatch.setenv("GOSHEN_MLFLOW_TRACKING_URI", mlflow_server)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    token = secrets.token_hex(3)
    names = {role: f"quality-{role}-{token}" for role in ("generator", "classifier")}
    for name in names.values():
        mlflow.MlflowClient().create_registered_model(name)
    try:
        yield Registered(names, [_train_and_register(t, names[t.role]) for t in TRAININGS])
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _train_and_register(training: Training, name: str) -> str:
    """Log a training run as the training assets do (goshen_pipelines.lib.runs), then register
    a version from it as publishing.register does, without an ONNX file (the notebook never
    opens one); the run's id."""
    import mlflow

    from goshen import registry
    from goshen_pipelines.lib import runs

    params = {"epochs": len(training.epochs)}
    with runs.tracked_run("model-quality", name, {"dataset_id": "digits"}, params) as run_id:
        on_epoch_end = runs.epoch_logger(len(training.epochs))
        for epoch, metrics in enumerate(training.epochs, start=1):
            on_epoch_end(epoch, metrics)
        if training.grid is not None:
            runs.log_sample_grid(training.grid)
        mlflow.log_metrics(
            {
                "onnx_parity_max_abs_diff": training.parity_max_abs_diff,
                training.metric_name: training.metric,
            }
        )
    client = mlflow.MlflowClient()
    version = client.create_model_version(
        name,
        f"runs:/{run_id}/model",
        run_id=run_id,
        tags={
            registry.METRIC_TAG: repr(training.metric),
            registry.METRIC_NAME_TAG: training.metric_name,
            registry.PARITY_TAG: repr(training.parity_max_abs_diff),
            registry.CHECKS_TAG: str(training.parity_max_abs_diff < 1e-3).lower(),
            "dataset_id": "digits",
        },
    ).version
    for alias in training.aliases:
        client.set_registered_model_alias(name, alias, version)
    return run_id


def _of(frame: pl.DataFrame, registered: Registered) -> pl.DataFrame:
    """The rows of the test's own models (the shared server holds other tests' too)."""
    roles = {name: role for role, name in registered.names.items()}
    return frame.filter(pl.col("model").is_in(list(roles))).with_columns(
        pl.col("model").replace_strict(roles)
    )


def test_the_notebook_compares_the_versions_their_curves_and_grids(
    registered: Registered,
) -> None:
    defs = run_notebook(NOTEBOOK)

    rows = {(r["model"], r["version"]): r for r in _of(defs["comparison"], registered).to_dicts()}
    assert {key: (r["metric_name"], r["metric"], r["run_id"]) for key, r in rows.items()} == {
        ("generator", 1): ("class_match", 0.62, registered.run_ids[0]),
        ("generator", 2): ("class_match", 0.88, registered.run_ids[1]),
        ("classifier", 1): ("val_accuracy", 0.93, registered.run_ids[2]),
        ("classifier", 2): ("val_accuracy", 0.8, registered.run_ids[3]),
    }
    assert {key for key, r in rows.items() if r["best"]} == {("generator", 2), ("classifier", 1)}
    assert {key for key, r in rows.items() if r["live"]} == {("generator", 1), ("classifier", 1)}
    assert rows["classifier", 1]["aliases"] == ["previous", "production"]
    assert [key for key, r in rows.items() if not r["checks_passed"]] == [("generator", 2)]

    # Each epoch's metrics at its epoch; what registration logged at step 0 is left out.
    logged = {
        (t.role, version, key, epoch): value
        for t, version in zip(TRAININGS, VERSIONS, strict=True)
        for epoch, metrics in enumerate(t.epochs, start=1)
        for key, value in metrics.items()
    }
    curves = _of(defs["curves"], registered)
    assert curves.height == len(logged) == 2 * 2 + 3 * 2 + 3 * 3 + 2 * 3
    assert {
        (r["model"], r["version"], r["key"], r["epoch"]): r["value"] for r in curves.to_dicts()
    } == logged

    grids = _of(defs["grids"], registered)
    assert grids.select("model", "version", "path").rows() == [
        ("generator", 2, "samples/samples.png")
    ]
    shown = Image.open(io.BytesIO(grids["image"][0]))
    assert shown.size == (3, 2)
    assert list(shown.convert("RGB").getdata()) == list(Image.open(io.BytesIO(GRID)).getdata())


def test_the_notebook_stops_when_a_versions_metric_tag_is_not_what_its_run_logged(
    registered: Registered,
) -> None:
    import mlflow

    from goshen import registry

    classifier = registered.names["classifier"]
    client = mlflow.MlflowClient()
    # The tag promotion compares, edited after registration; put back for the tests after.
    client.set_model_version_tag(classifier, "2", registry.METRIC_TAG, "0.99")
    try:
        with pytest.raises(AssertionError, match=f"{classifier} v2: the version's goshen.metric"):
            run_notebook(NOTEBOOK)
    finally:
        client.set_model_version_tag(classifier, "2", registry.METRIC_TAG, repr(0.8))
