"""Uploaded ONNX models are checked in a capped child process; what it refuses, and why."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from goshen.errors import InvalidInputError, PayloadTooLargeError
from goshen.model_uploads import validation
from goshen.model_uploads.validation import ModelUploadLimits, validate_onnx_upload
from goshen.model_uploads.verdict import ValidatedModel
from goshen.runtimes.onnx.model import OnnxModel
from goshen.runtimes.onnx.signature import TensorSpec

LIMITS = ModelUploadLimits(max_bytes=16 * 2**20, memory_bytes=2**30, timeout_seconds=60)
OPSET = [helper.make_opsetid("", 17)]
FEATURES = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
OUTPUT = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The folder an upload lands in; tmp_path itself (its parent here) is outside it."""
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    upload = tmp_path / "upload"
    upload.mkdir()
    return upload


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _graph(nodes: list[onnx.NodeProto], initializers: list[TensorProto] = ()) -> onnx.GraphProto:
    return helper.make_graph(nodes, "upload", [FEATURES], [OUTPUT], list(initializers))


def _adder(*, opsets: list[onnx.OperatorSetIdProto] = OPSET) -> onnx.ModelProto:
    """y = x + w with a 4-float initializer w."""
    values = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32).tobytes()
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4], values, raw=True)
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    return helper.make_model(_graph(nodes, [weights]), opset_imports=opsets)


def _external(name: str, location: str, length: int = 16) -> TensorProto:
    """A 4-float tensor whose data sits in `location`."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _refused(path: Path, limits: ModelUploadLimits = LIMITS) -> str:
    with pytest.raises(InvalidInputError) as caught:
        validate_onnx_upload(path, limits)
    assert caught.value.field == "file"
    message = str(caught.value)
    assert str(path.parent) not in message, "refusals must not show server paths"
    return message


class TinyClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=1)


def test_a_torch_exported_classifier_is_accepted(folder: Path) -> None:
    path = folder / "model.onnx"
    torch.onnx.export(
        TinyClassifier().eval(),
        (torch.zeros(2, 4),),
        str(path),
        input_names=["x"],
        output_names=["probabilities"],
        dynamic_axes={"x": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    validated = validate_onnx_upload(path, LIMITS)
    assert validated == ValidatedModel(
        inputs=[TensorSpec("x", "float32", ("batch", 4))],
        outputs=[TensorSpec("probabilities", "float32", ("batch", 3))],
        opset_imports={"": 17},
        providers=["CPUExecutionProvider"],
    )
    assert validated.public_schema() == OnnxModel.from_file(path).public_schema()


def test_external_data_inside_the_folder_is_accepted(folder: Path) -> None:
    path = folder / "model.onnx"
    onnx.save_model(
        _adder(), path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    assert (folder / "weights.bin").stat().st_size == 16
    validated = validate_onnx_upload(path, LIMITS)
    assert [spec.name for spec in validated.inputs] == ["x"]


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("../secret.bin", "climbs out of the folder with '..'"),
        ("/etc/passwd", "is an absolute path"),
        ("weights\\..\\..\\secret.bin", "backslash"),
        ("missing.bin", "does not exist"),
    ],
)
def test_external_data_outside_the_folder_is_refused(
    folder: Path, location: str, says: str
) -> None:
    model = _adder()
    model.graph.initializer[0].CopyFrom(_external("w", location))
    message = _refused(_save(model, folder))
    assert says in message and "tensor 'w' (in the main graph)" in message


def test_an_absolute_path_to_an_existing_file_is_refused(folder: Path) -> None:
    model = _adder()
    model.graph.initializer[0].CopyFrom(_external("w", str(folder.parent / "secret.bin")))
    assert "is an absolute path" in _refused(_save(model, folder))


def test_a_link_out_of_the_folder_is_refused(folder: Path) -> None:
    (folder / "weights.bin").symlink_to(folder.parent / "secret.bin")
    model = _adder()
    model.graph.initializer[0].CopyFrom(_external("w", "weights.bin"))
    assert "resolves (through a link) to a file outside" in _refused(_save(model, folder))


def test_external_data_of_a_constant_in_a_subgraph_is_checked(folder: Path) -> None:
    def branch(tensor: TensorProto) -> onnx.GraphProto:
        constant = helper.make_node("Constant", [], ["c"], value=tensor)
        add = helper.make_node("Add", ["x", "c"], ["out"])
        output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])
        return helper.make_graph([constant, add], "branch", [], [output])

    inline = helper.make_tensor("inline", TensorProto.FLOAT, [4], [0.0] * 4)
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node(
            "If",
            ["positive"],
            ["y"],
            name="choose",
            then_branch=branch(_external("leak", "../secret.bin")),
            else_branch=branch(inline),
        ),
    ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    model = helper.make_model(_graph(nodes, [zero]), opset_imports=OPSET)
    message = _refused(_save(model, folder))
    assert "tensor 'leak'" in message and "If node 'choose' attribute then_branch" in message


def test_a_contrib_op_in_the_main_graph_is_refused(folder: Path) -> None:
    nodes = [
        helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="fused", domain="com.microsoft")
    ]
    opsets = [*OPSET, helper.make_opsetid("com.microsoft", 1)]
    message = _refused(_save(helper.make_model(_graph(nodes), opset_imports=opsets), folder))
    assert "op FusedMatMul of domain 'com.microsoft' (node 'fused', in the main graph)" in message


def test_a_custom_op_inside_an_if_subgraph_is_refused(folder: Path) -> None:
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])
    custom = helper.make_node("Frobnicate", ["x"], ["out"], name="frob", domain="com.example")
    standard = helper.make_node("Identity", ["x"], ["out"])
    nodes = [
        helper.make_node("Constant", [], ["yes"], value=helper.make_tensor("t", 9, [], [True])),
        helper.make_node(
            "If",
            ["yes"],
            ["y"],
            name="choose",
            then_branch=helper.make_graph([custom], "then", [], [output]),
            else_branch=helper.make_graph([standard], "else", [], [output]),
        ),
    ]
    opsets = [*OPSET, helper.make_opsetid("com.example", 1)]
    message = _refused(_save(helper.make_model(_graph(nodes), opset_imports=opsets), folder))
    assert "Frobnicate of domain 'com.example'" in message
    assert "If node 'choose' attribute then_branch" in message


def _function_model(body: onnx.NodeProto, domain: str = "local.fns") -> onnx.ModelProto:
    """The main graph calls the model's own function `domain`.Scale, whose body is `body`."""
    body_opsets = [*OPSET, *([helper.make_opsetid(body.domain, 1)] if body.domain else [])]
    scale = helper.make_function(domain, "Scale", ["a"], ["b"], [body], body_opsets)
    call = helper.make_node("Scale", ["x"], ["y"], name="call", domain=domain)
    opsets = [*OPSET, helper.make_opsetid(domain, 1)]
    return helper.make_model(_graph([call]), opset_imports=opsets, functions=[scale])


def test_a_custom_op_inside_a_local_function_is_refused(folder: Path) -> None:
    body = helper.make_node("Frobnicate", ["a"], ["b"], name="inner", domain="com.example")
    message = _refused(_save(_function_model(body), folder))
    assert "Frobnicate of domain 'com.example'" in message
    assert "in local function local.fns.Scale" in message


def test_a_local_function_of_standard_ops_is_accepted(folder: Path) -> None:
    validated = validate_onnx_upload(
        _save(_function_model(helper.make_node("Relu", ["a"], ["b"])), folder), LIMITS
    )
    assert validated.opset_imports == {"": 17, "local.fns": 1}


def test_a_local_function_may_not_claim_a_runtime_domain(folder: Path) -> None:
    model = _function_model(helper.make_node("Relu", ["a"], ["b"]), domain="com.microsoft")
    assert "which belongs to ONNX or ONNX Runtime" in _refused(_save(model, folder))


def test_training_op_sets_are_refused(folder: Path) -> None:
    opsets = [*OPSET, helper.make_opsetid("ai.onnx.preview.training", 1)]
    message = _refused(_save(_adder(opsets=opsets), folder))
    assert "imports op set domain 'ai.onnx.preview.training'" in message


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (lambda path: path.write_bytes(pickle.dumps({"w": [1.0, 2.0]})), "is a Python pickle"),
        (lambda path: torch.save(TinyClassifier().state_dict(), path), "is a PyTorch checkpoint"),
        (
            lambda path: torch.save(
                TinyClassifier().state_dict(), path, _use_new_zipfile_serialization=False
            ),
            "is a Python pickle",
        ),
        (lambda path: path.write_text("name,label\ncat,1\n"), "is not an ONNX model"),
    ],
    ids=["pickle", "torch-zip", "torch-legacy", "csv"],
)
def test_files_that_are_not_onnx_named_model_onnx_are_refused(
    folder: Path, write: object, says: str
) -> None:
    path = folder / "model.onnx"
    write(path)  # type: ignore[operator]
    message = _refused(path)
    assert says in message
    assert "export" in message or "upload the .onnx" in message


def test_an_oversize_file_is_refused_before_any_check(folder: Path) -> None:
    path = _save(_adder(), folder)
    limits = ModelUploadLimits(max_bytes=10, memory_bytes=2**30, timeout_seconds=60)
    with pytest.raises(PayloadTooLargeError, match="over the limit of 10"):
        validate_onnx_upload(path, limits)


def test_external_data_counts_toward_the_size_limit(folder: Path) -> None:
    model = _adder()
    model.graph.initializer[0].CopyFrom(_external("w", "weights.bin"))
    path = _save(model, folder)
    (folder / "weights.bin").write_bytes(b"\0" * 64 * 1024)
    limits = ModelUploadLimits(max_bytes=32 * 1024, memory_bytes=2**30, timeout_seconds=60)
    with pytest.raises(PayloadTooLargeError, match="with its external data"):
        validate_onnx_upload(path, limits)


def test_a_model_needing_more_than_the_memory_cap_is_refused(folder: Path) -> None:
    floats = 256 * 2**20  # 1 GiB of weights, in a sparse file that takes no disk
    weights = _external("w", "weights.bin", length=4 * floats)
    del weights.dims[:]
    weights.dims.append(floats)
    vector = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [floats]) for name in "xy"]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "big", vector[:1], vector[1:], [weights]
    )
    path = _save(helper.make_model(graph, opset_imports=OPSET), folder)
    with (folder / "weights.bin").open("wb") as file:
        file.truncate(4 * floats)
    limits = ModelUploadLimits(max_bytes=2 * 2**30, memory_bytes=512 * 2**20, timeout_seconds=60)
    assert "needed more than 512 MiB of memory" in _refused(path, limits)


def test_a_check_that_takes_too_long_is_refused(folder: Path) -> None:
    limits = ModelUploadLimits(max_bytes=2**20, memory_bytes=2**30, timeout_seconds=0.01)
    assert "took longer than 0.01 s" in _refused(_save(_adder(), folder), limits)


def test_a_checker_that_crashes_is_a_refusal_saying_so(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        validation, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    )
    assert "crashed ONNX tooling (signal SIGSEGV)" in _refused(_save(_adder(), folder))


def test_a_model_whose_outputs_json_cannot_carry_is_refused(folder: Path) -> None:
    text = helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 4])
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)]
    graph = helper.make_graph(nodes, "strings", [FEATURES], [text])
    message = _refused(_save(helper.make_model(graph, opset_imports=OPSET), folder))
    assert "cannot be served by /predict" in message


def test_a_graph_the_checker_refuses_is_refused(folder: Path) -> None:
    model = _adder()
    model.graph.node[0].input[1] = "nothing_makes_this"
    assert "the ONNX checker refuses the model" in _refused(_save(model, folder))


def test_a_model_that_allocates_without_bound_when_run_is_refused(folder: Path) -> None:
    """It loads fine; only running it asks for 64 GiB (ConstantOfShape): the child's cap stops
    it, so the API process that would serve it never tries."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2**17, 2**17])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["huge"]),
        helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    model = helper.make_model(_graph(nodes, [shape]), opset_imports=OPSET)
    limits = ModelUploadLimits(max_bytes=2**20, memory_bytes=512 * 2**20, timeout_seconds=60)
    assert "needed more than 512 MiB of memory" in _refused(_save(model, folder), limits)


def test_a_model_that_fails_on_its_example_input_is_refused(folder: Path) -> None:
    columns = helper.make_tensor("columns", TensorProto.INT64, [4], [9, 9, 9, 9])  # x has 4
    nodes = [helper.make_node("Gather", ["x", "columns"], ["y"], axis=1)]
    model = helper.make_model(_graph(nodes, [columns]), opset_imports=OPSET)
    message = _refused(_save(model, folder))
    assert "fails on an example input (x [1, 4]" in message
