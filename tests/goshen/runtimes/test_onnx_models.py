"""ONNX models as /predict serves them: signature, input checks, answers and sessions."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from goshen.errors import InvalidInputError
from goshen.runtimes.devices import cpu_device
from goshen.runtimes.onnx import session
from goshen.runtimes.onnx.model import OnnxModel
from goshen.runtimes.onnx.signature import TensorSpec, UnservableModelError

CLASSES = ["cat", "dog", "eel"]


class TinyClassifier(torch.nn.Module):
    """Four features -> probabilities of three classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(features), dim=1)


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow ONNX model folder as the registry hands it out."""
    folder = tmp_path_factory.mktemp("classifier")
    torch.onnx.export(
        TinyClassifier().eval(),
        (torch.zeros(2, 4),),
        str(folder / "model.onnx"),
        input_names=["features"],
        output_names=["probabilities"],
        dynamic_axes={"features": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    mlmodel = {
        "flavors": {"onnx": {"onnx_model": "model.onnx"}},
        "metadata": {
            "kind": "onnx",
            "task": "classification",
            "classes": CLASSES,
            "input_ranges": {"features": [0.0, 10.0]},
        },
    }
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


@pytest.fixture(scope="module")
def classifier(classifier_folder: Path) -> OnnxModel:
    return OnnxModel.from_folder(classifier_folder)


@pytest.fixture(scope="module")
def scaler_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two inputs, `x` float32 [batch, 2] and `ids` int64 [batch]: y = x * ids."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids_float", "axis"], ["column"]),
        helper.make_node("Mul", ["x", "column"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scaler",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    path = tmp_path_factory.mktemp("scaler") / "scaler.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def scaler(scaler_path: Path) -> OnnxModel:
    return OnnxModel.from_file(scaler_path)


def test_a_registered_classifier_loads_with_its_metadata(classifier: OnnxModel) -> None:
    assert classifier.inputs == [TensorSpec("features", "float32", ("batch", 4), (0.0, 10.0))]
    assert classifier.outputs == [TensorSpec("probabilities", "float32", ("batch", 3), (0.0, 1.0))]
    assert (classifier.task, classifier.classes) == ("classification", CLASSES)
    assert classifier.batchable
    assert classifier.device.kind == "cpu"


def test_results_are_those_of_onnx_runtime_called_directly(
    classifier: OnnxModel, classifier_folder: Path
) -> None:
    rows = [[0.5, 1.0, -2.0, 3.0], [9.0, 0.0, 1.5, 2.0]]
    feeds = classifier.check_inputs({"features": rows}, max_rows=8)
    direct = ort.InferenceSession(
        str(classifier_folder / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, {"features": np.array(rows, dtype=np.float32)})[0]
    assert np.array_equal(classifier.run(feeds)["probabilities"], direct)
    assert classifier.rows(feeds) == 2


def test_a_single_input_model_takes_a_bare_list(classifier: OnnxModel) -> None:
    rows = [[1, 2, 3, 4]]
    bare = classifier.check_inputs(rows, max_rows=8)
    named = classifier.check_inputs({"features": rows}, max_rows=8)
    assert bare["features"].dtype == np.float32
    assert np.array_equal(bare["features"], named["features"])


def test_classifiers_answer_labels_and_probabilities(classifier: OnnxModel) -> None:
    rows = [[0.5, 1.0, -2.0, 3.0], [9.0, 0.0, 1.5, 2.0], [-4.0, 2.0, 0.0, 0.0]]
    outputs = classifier.run(classifier.check_inputs(rows, max_rows=8))
    answer = json.loads(classifier.answer(outputs))
    probabilities = outputs["probabilities"]
    assert answer["labels"] == [CLASSES[i] for i in probabilities.argmax(axis=1)]
    assert np.allclose(answer["probabilities"], probabilities)
    assert answer["outputs"]["probabilities"] == answer["probabilities"]
    assert all(math.isclose(sum(row), 1.0, rel_tol=1e-5) for row in answer["probabilities"])


def test_a_row_whose_probabilities_are_not_finite_gets_no_label(classifier: OnnxModel) -> None:
    nan, inf = float("nan"), float("inf")
    rows = [[0.1, nan, 0.2], [0.1, 0.7, 0.2], [inf, 0.0, 0.0], [0.2, 0.3, 0.5]]
    probabilities = np.array(rows, dtype=np.float32)
    assert classifier.present({"probabilities": probabilities})["labels"] == [
        None,
        CLASSES[1],
        None,
        CLASSES[2],
    ]
    # Finite values whose sum overflows: every row still gets its label.
    huge = np.array([[3e38, 3e38, 0.0], [0.0, 1.0, 3e38]], dtype=np.float32)
    assert classifier.present({"probabilities": huge})["labels"] == [CLASSES[0], CLASSES[2]]


def test_concurrent_runs_from_threads_each_get_their_own_rows(classifier: OnnxModel) -> None:
    batches = [np.random.default_rng(seed).normal(size=(seed % 5 + 1, 4)) for seed in range(64)]
    feeds = [classifier.check_inputs(batch.tolist(), max_rows=8) for batch in batches]
    alone = [classifier.run(feed)["probabilities"] for feed in feeds]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda feed: classifier.run(feed)["probabilities"], feeds * 4))
    assert all(np.array_equal(got, alone[i % 64]) for i, got in enumerate(together))


def test_public_schema_publishes_the_signature_and_a_working_example(
    classifier: OnnxModel,
) -> None:
    schema = json.loads(json.dumps(classifier.public_schema()))
    assert schema["inputs"] == [
        {"name": "features", "dtype": "float32", "shape": [None, 4], "value_range": [0.0, 10.0]}
    ]
    assert schema["outputs"] == [
        {"name": "probabilities", "dtype": "float32", "shape": [None, 3], "value_range": [0, 1]}
    ]
    assert (schema["task"], schema["classes"], schema["batchable"]) == (
        "classification",
        CLASSES,
        True,
    )
    # The example is one row in the middle of the published range, and it runs.
    assert schema["example"] == {"inputs": {"features": [[5.0, 5.0, 5.0, 5.0]]}}
    feeds = classifier.check_inputs(schema["example"]["inputs"], max_rows=1)
    assert classifier.run(feeds)["probabilities"].shape == (1, 3)


def test_example_of_a_model_without_ranges_is_zeros_of_each_dtype(scaler: OnnxModel) -> None:
    example = scaler.public_schema()["example"]["inputs"]
    assert example == {"x": [[0.0, 0.0]], "ids": [0]}
    assert scaler.run(scaler.check_inputs(example, max_rows=1))["y"].tolist() == [[0.0, 0.0]]


def _refusal(model: OnnxModel, payload: object, max_rows: int = 4) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        model.check_inputs(payload, max_rows=max_rows)
    return caught.value


ROW = {"x": [[1.0, 2.0]], "ids": [3]}


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        (
            {"x": [[1.0, 2.0]]},
            "inputs.ids",
            "missing input 'ids': send an array of int64 shaped [batch]",
        ),
        ({**ROW, "z": [1]}, "inputs.z", "unknown input 'z'; this model takes x, ids"),
        ({**ROW, "x": [[1.0, 2.0], [3.0]]}, "inputs.x", "not a regular nested list"),
        ({**ROW, "x": [["a", "b"]]}, "inputs.x", "numbers (float32), not text"),
        ({**ROW, "x": [[None, 1.0]]}, "inputs.x", "not null"),
        ({**ROW, "x": [[True, False]]}, "inputs.x", "not true or false"),
        ({**ROW, "ids": [0.5]}, "inputs.ids", "integers (int64); found fractional"),
        ({**ROW, "ids": [2**70]}, "inputs.ids", "integers from -9223372036854775808"),
        ({**ROW, "x": [[math.nan, 1.0]]}, "inputs.x", "not NaN"),
        ({**ROW, "x": [[math.inf, 1.0]]}, "inputs.x", "not infinity"),
        ({**ROW, "x": [[1e39, 1.0]]}, "inputs.x", "beyond float32's range"),
        (
            {**ROW, "x": [1.0, 2.0]},
            "inputs.x",
            "inputs.x has shape [2]; send an array of float32 shaped [batch, 2]",
        ),
        ({**ROW, "x": [[1.0, 2.0, 3.0]]}, "inputs.x", "dimension 1 must be 2"),
        ({"x": [[1.0, 2.0]] * 2, "ids": [1]}, "inputs.ids", "has 1 rows but inputs.x has 2"),
        ({"x": [[1.0, 2.0]] * 5, "ids": [1] * 5}, "inputs.x", "over the limit of 4"),
        ({"x": [], "ids": []}, "inputs.x", "has no rows"),
        ([[1.0, 2.0]], "inputs", "takes 2 inputs (x, ids)"),
        ("features", "inputs", "send an object"),
    ],
)
def test_bad_inputs_are_refused_naming_the_field_and_the_fix(
    scaler: OnnxModel, payload: object, field: str, says: str
) -> None:
    refusal = _refusal(scaler, payload)
    assert refusal.field == field
    assert says in str(refusal)
    assert refusal.status_code == 422


def test_a_missing_batch_dim_gets_a_hint(classifier: OnnxModel) -> None:
    refusal = _refusal(classifier, [1.0, 2.0, 3.0, 4.0])
    assert "wrap a single row in a list" in str(refusal)


def test_too_many_rows_are_refused_before_conversion(classifier: OnnxModel) -> None:
    # Rows that would not even convert: the count alone is enough to refuse them.
    refusal = _refusal(classifier, [["not numbers"]] * 5, max_rows=4)
    assert (refusal.field, "over the limit of 4" in str(refusal)) == ("inputs.features", True)


def test_integral_numbers_are_integers_and_ints_are_floats(scaler: OnnxModel) -> None:
    feeds = scaler.check_inputs({"x": [[1, 2]], "ids": [3.0]}, max_rows=4)
    assert (feeds["x"].dtype, feeds["ids"].dtype) == (np.float32, np.int64)
    assert scaler.run(feeds)["y"].tolist() == [[3.0, 6.0]]


def test_inputs_named_in_nan_inputs_take_missing_values(scaler_path: Path) -> None:
    model = OnnxModel.from_file(scaler_path, {"nan_inputs": ["x"]})
    feeds = model.check_inputs({"x": [[None, 1.0], [math.nan, 2.0]], "ids": [1, 1]}, max_rows=4)
    assert np.isnan(feeds["x"][:, 0]).all() and feeds["x"][:, 1].tolist() == [1.0, 2.0]
    assert _refusal(model, {"x": [[math.inf, 1.0]], "ids": [1]}).field == "inputs.x"


def test_outputs_that_are_not_finite_answer_null(scaler: OnnxModel) -> None:
    outputs = scaler.run(scaler.check_inputs({"x": [[3e38, 1.0]], "ids": [10]}, max_rows=4))
    assert json.loads(scaler.answer(outputs)) == {"outputs": {"y": [[None, 10.0]]}}


def test_inputs_agree_on_rows_and_on_dims_of_the_same_name(tmp_path: Path) -> None:
    """`a` and `b` are [unnamed, seq]: rows agree though unnamed, and so do `seq` sizes."""
    pair = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, "seq"]) for name in "ab"]
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["total"])],
        "pair",
        pair,
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [None, "seq"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m")
    model = OnnxModel.from_file(tmp_path / "m")
    assert model.batchable
    assert model.public_schema()["inputs"][0]["shape"] == [None, "seq"]
    rows = _refusal(model, {"a": [[1.0, 2.0]], "b": [[1.0, 2.0]] * 2})
    assert (rows.field, "has 2 rows but inputs.a has 1" in str(rows)) == ("inputs.b", True)
    seq = _refusal(model, {"a": [[1.0, 2.0]], "b": [[1.0, 2.0, 3.0]]})
    assert "inputs.b has 3 along dimension 'seq' but inputs.a has 2" in str(seq)
    feeds = model.check_inputs({"a": [[1.0, 2.0]], "b": [[3.0, 4.0]]}, max_rows=4)
    assert model.run(feeds)["total"].tolist() == [[4.0, 6.0]]


def test_a_model_with_a_fixed_batch_takes_requests_one_at_a_time(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m")
    model = OnnxModel.from_file(tmp_path / "m")
    assert not model.batchable
    assert model.public_schema()["inputs"][0]["shape"] == [1, 3]
    feeds = model.check_inputs([[-1.0, 0.0, 2.0]], max_rows=64)
    assert model.rows(feeds) == 1
    assert model.run(feeds)["y"].tolist() == [[0.0, 0.0, 2.0]]
    assert "dimension 0 must be 1" in str(_refusal(model, [[1.0, 2.0, 3.0]] * 2))


def test_metadata_that_disagrees_with_the_graph_is_refused_at_load(classifier_folder: Path) -> None:
    path = classifier_folder / "model.onnx"
    with pytest.raises(ValueError, match="names 2 classes, but probabilities has 3"):
        OnnxModel.from_file(path, {"task": "classification", "classes": ["a", "b"]})
    with pytest.raises(ValueError, match="input_ranges names"):
        OnnxModel.from_file(path, {"input_ranges": {"pixels": [0, 1]}})


def test_graphs_with_outputs_json_cannot_carry_are_unservable(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["text"], to=TensorProto.STRING)],
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m")
    with pytest.raises(UnservableModelError, match="'text' is"):
        OnnxModel.from_file(tmp_path / "m")


def test_sessions_prefer_cuda_when_the_runtime_offers_it(
    classifier_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: dict[str, object] = {}
    real_session = ort.InferenceSession

    def recording_session(
        path: str, sess_options: ort.SessionOptions, providers: list[str]
    ) -> ort.InferenceSession:
        chosen.update(providers=providers, options=sess_options)
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    OnnxModel.from_folder(classifier_folder)
    assert chosen["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    options = chosen["options"]
    assert isinstance(options, ort.SessionOptions)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == 1

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    OnnxModel.from_folder(classifier_folder)
    assert chosen["providers"] == ["CPUExecutionProvider"]


def test_a_session_on_cuda_reports_a_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    class CudaSession:
        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    # What ONNX Runtime ran on decides, even where PyTorch is a CPU build.
    monkeypatch.setattr(session, "detect_device", cpu_device)
    assert session.session_device(CudaSession()).kind == "cuda"  # type: ignore[arg-type]  # a stand-in session


def test_outputs_whose_first_dim_is_not_the_batch_axis_are_not_merged(tmp_path: Path) -> None:
    """Reshape to [-1, 1]: two rows out per row in, so merged requests would swap rows."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["flat", 1])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m")
    model = OnnxModel.from_file(tmp_path / "m")
    assert not model.batchable and not model.public_schema()["batchable"]
    feeds = model.check_inputs([[1.0, 2.0], [3.0, 4.0]], max_rows=8)
    assert model.rows(feeds) == 2 and model.run(feeds)["y"].shape == (4, 1)
