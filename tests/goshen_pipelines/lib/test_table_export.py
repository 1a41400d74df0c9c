"""A table model exported with one input per feature column, named and typed as the column,
and served by name: signature, parity, published ranges and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest
import torch

from goshen.db.models import DatasetKind
from goshen.errors import InvalidInputError
from goshen.runtimes.onnx.model import OnnxModel
from goshen_pipelines.lib import export, publishing
from goshen_pipelines.lib.arrays import table_arrays
from goshen_pipelines.lib.classifier import ClassifierConfig, TrainedTabularModel, train_classifier
from goshen_pipelines.lib.ingest import CanonicalDataset

COLUMNS = [("age", "int64"), ("income", "float64"), ("score", "float32")]
ONNX_TYPES = {
    "int64": onnx.TensorProto.INT64,
    "float64": onnx.TensorProto.DOUBLE,
    "float32": onnx.TensorProto.FLOAT,
}


def _table(rows: int = 60) -> CanonicalDataset:
    rng = np.random.default_rng(0)
    age = rng.integers(18, 80, rows)
    frame = pl.DataFrame(
        {
            "age": pl.Series(age, dtype=pl.Int32),
            "income": pl.Series(rng.normal(1000.0, 300.0, rows), dtype=pl.Float64),
            "score": pl.Series(rng.random(rows), dtype=pl.Float32),
            "bought": ["yes" if years > 40 else "no" for years in age],
        }
    )
    return CanonicalDataset(frame, DatasetKind.tabular, ["no", "yes"])


@pytest.fixture(scope="module")
def table() -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    return table_arrays(_table(), "bought")


@pytest.fixture(scope="module")
def model(table: tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]) -> TrainedTabularModel:
    features, targets, _ = table
    return train_classifier(features, targets, ClassifierConfig(epochs=2, hidden_sizes=(8,)))


@pytest.fixture(scope="module")
def exported(
    model: TrainedTabularModel,
    table: tuple[np.ndarray, np.ndarray, list[tuple[str, str]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, float]:
    features, _, columns = table
    return publishing.export_tabular(model, features, tmp_path_factory.mktemp("table"), columns)


@pytest.fixture(scope="module")
def served(
    model: TrainedTabularModel,
    table: tuple[np.ndarray, np.ndarray, list[tuple[str, str]]],
    exported: tuple[Path, float],
) -> OnnxModel:
    features, _, columns = table
    metadata = {
        "task": model.task,
        "classes": [str(name) for name in model.classes],
        "input_ranges": export.input_ranges(features, columns),
    }
    return OnnxModel.from_file(exported[0], metadata)


def test_table_arrays_name_and_type_each_feature_column(
    table: tuple[np.ndarray, np.ndarray, list[tuple[str, str]]],
) -> None:
    features, targets, columns = table
    assert columns == COLUMNS
    assert features.dtype == np.float32 and features.shape == (60, 3) and len(targets) == 60


def test_boolean_feature_columns_are_still_refused() -> None:
    dataset = _table()
    frame = dataset.frame.with_columns(member=pl.Series([True, False] * 30))
    with pytest.raises(InvalidInputError, match="member"):
        table_arrays(CanonicalDataset(frame, dataset.kind, dataset.classes), "bought")


def test_the_graph_takes_one_batched_input_per_column_of_its_type(
    exported: tuple[Path, float],
) -> None:
    graph = onnx.load(exported[0]).graph
    inputs = [(i.name, i.type.tensor_type) for i in graph.input]
    assert [(name, tensor.elem_type) for name, tensor in inputs] == [
        (name, ONNX_TYPES[dtype]) for name, dtype in COLUMNS
    ]
    for _, tensor in inputs:
        assert [dim.dim_param for dim in tensor.shape.dim] == [export.BATCH_AXIS]
    assert [o.name for o in graph.output] == ["probabilities"]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_parity_holds_at_each_batch_size(
    model: TrainedTabularModel,
    table: tuple[np.ndarray, np.ndarray, list[tuple[str, str]]],
    exported: tuple[Path, float],
    batch_size: int,
) -> None:
    features, _, columns = table
    assert exported[1] <= publishing.PARITY_TOLERANCE
    inputs = export.tabular_inputs(features[20:], batch_size, columns)
    assert [array.dtype.name for array in inputs.values()] == [dtype for _, dtype in COLUMNS]
    assert export.parity(model.export_module(per_column=True), exported[0], inputs) <= 1e-4


def test_the_served_model_answers_as_the_trained_one(
    model: TrainedTabularModel,
    table: tuple[np.ndarray, np.ndarray, list[tuple[str, str]]],
    served: OnnxModel,
) -> None:
    features = table[0][:5]
    payload = {
        "age": features[:, 0].astype(int).tolist(),
        "income": features[:, 1].tolist(),
        "score": features[:, 2].tolist(),
    }
    feeds = served.check_inputs(payload, max_rows=8)
    assert [feeds[name].dtype.name for name, _ in COLUMNS] == [dtype for _, dtype in COLUMNS]
    probabilities = served.run(feeds)["probabilities"]
    with torch.inference_mode():
        expected = model.export_module()(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert served.present(served.run(feeds))["labels"] == model.predict(features).tolist()


def test_requests_merged_along_the_batch_axis_get_their_own_rows(served: OnnxModel) -> None:
    first = served.check_inputs({"age": [31], "income": [1200.5], "score": [0.5]}, max_rows=8)
    second = served.check_inputs(
        {"age": [45, 70], "income": [800.0, 90.0], "score": [0.1, 0.9]}, max_rows=8
    )
    merged = {name: np.concatenate([first[name], second[name]]) for name in first}
    together = served.run(merged)["probabilities"]
    alone = [served.run(feeds)["probabilities"] for feeds in (first, second)]
    np.testing.assert_allclose(together, np.concatenate(alone), atol=1e-6)
    assert served.batchable and served.rows(merged) == 3


def test_the_public_schema_lists_each_column_with_its_training_range(
    table: tuple[np.ndarray, np.ndarray, list[tuple[str, str]]], served: OnnxModel
) -> None:
    features = table[0]
    schema = served.public_schema()
    assert [(spec["name"], spec["dtype"], spec["shape"]) for spec in schema["inputs"]] == [
        (name, dtype, [None]) for name, dtype in COLUMNS
    ]
    for index, spec in enumerate(schema["inputs"]):
        column = features[:, index]
        assert spec["value_range"] == [float(column.min()), float(column.max())]
    assert schema["inputs"][0]["value_range"][0] >= 18
    example = schema["example"]["inputs"]
    assert isinstance(example["age"][0], int) and len(example["income"]) == 1
    assert served.run(served.check_inputs(example, max_rows=1))["probabilities"].shape == (1, 2)


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        ({"age": [31], "score": [0.5]}, "inputs.income", "missing input 'income'"),
        ({"age": ["31"], "income": [1.0], "score": [0.5]}, "inputs.age", "not text"),
        ({"age": [31], "income": ["lots"], "score": [0.5]}, "inputs.income", "not text"),
        ({"age": [31.5], "income": [1.0], "score": [0.5]}, "inputs.age", "fractional"),
        ({"age": [True], "income": [1.0], "score": [0.5]}, "inputs.age", "not true or false"),
        ({"age": 31, "income": [1.0], "score": [0.5]}, "inputs.age", "wrap a single row"),
        ({"age": [31, 40], "income": [1.0], "score": [0.5]}, "inputs.income", "has 1 rows"),
    ],
)
def test_bad_columns_are_refused_naming_the_column(
    served: OnnxModel, payload: dict[str, object], field: str, says: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        served.check_inputs(payload, max_rows=8)
    assert caught.value.field == field
    assert field.removeprefix("inputs.") in str(caught.value)
    assert says in str(caught.value)


def test_without_columns_the_model_keeps_its_single_features_input(
    digits_classifier: TrainedTabularModel, tmp_path: Path
) -> None:
    features = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    path, diff = publishing.export_tabular(digits_classifier, features, tmp_path)
    (features_input,) = onnx.load(path).graph.input
    dims = features_input.type.tensor_type.shape.dim
    assert features_input.name == export.TABULAR_INPUT and diff <= publishing.PARITY_TOLERANCE
    assert features_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert (dims[0].dim_param, dims[1].dim_value) == (export.BATCH_AXIS, 64)
    ranges = export.input_ranges(features)
    assert ranges == {export.TABULAR_INPUT: [float(features.min()), float(features.max())]}


def test_columns_that_do_not_fit_the_model_or_the_graph_are_refused(
    model: TrainedTabularModel,
    table: tuple[np.ndarray, np.ndarray, list[tuple[str, str]]],
    tmp_path: Path,
) -> None:
    features = table[0]
    with pytest.raises(ValueError, match="takes 3 features but got 2 columns"):
        export.export_tabular_model(model, tmp_path / "a.onnx", features, COLUMNS[:2])
    # A column can't share its name with the output: it would be renamed, not served by name.
    clashing = [("probabilities", "int64"), *COLUMNS[1:]]
    with pytest.raises(ValueError, match="'probabilities' clashes"):
        export.export_tabular_model(model, tmp_path / "b.onnx", features, clashing)
