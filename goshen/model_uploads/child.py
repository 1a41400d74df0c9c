"""The child process's side of an upload check: every check, in order, and its JSON verdict."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from goshen.errors import GoshenError, PayloadTooLargeError
from goshen.model_uploads.graph_checks import check_domains, check_external_data
from goshen.model_uploads.verdict import MEMORY_SIGNS, ValidatedModel, check_size, invalid, refused
from goshen.runtimes.onnx.schema import example_value
from goshen.runtimes.onnx.signature import TensorSpec, UnservableModelError, graph_signature

PICKLE_PROTOCOLS = range(2, 6)  # pickle.dumps(protocol >= 2) starts with b"\x80" and the protocol
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_MESSAGE_LIMIT = 600


def child_main(path: str, max_bytes: int) -> None:
    """Check `path` and write the verdict as one JSON object on stdout, then exit."""
    verdict_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what native code prints goes to stderr, never into the verdict
    model_file = Path(path)
    try:
        verdict = {"ok": True, "model": check_model_file(model_file, max_bytes).to_dict()}
    except MemoryError:
        verdict = {"ok": False, "status": "memory"}
    except PayloadTooLargeError as exc:
        verdict = refused(_public(exc, model_file), "too_large")
    except GoshenError as exc:
        verdict = refused(_public(exc, model_file))
    except Exception as exc:  # noqa: BLE001 - any failure to check a model is a refusal of it
        verdict = refused(f"the model could not be checked: {_public(exc, model_file)}")
    verdict_out.write(json.dumps(verdict))
    verdict_out.flush()


def _public(exc: BaseException, model_file: Path) -> str:
    """An error's text as the uploader may see it: no server paths, bounded length."""
    message = str(exc).replace(f"{model_file.parent}{os.sep}", "").replace(str(model_file), "")
    return message[:_MESSAGE_LIMIT]


def check_model_file(model_file: Path, max_bytes: int) -> ValidatedModel:
    """Every check of the package docstring, in this process; raises the refusal.

    `validate_onnx_upload` runs it in the capped child: never call it on an upload directly.
    """
    _check_format(model_file)
    model = _parse(model_file)
    check_domains(model)
    external = check_external_data(model, model_file.parent)
    check_size(model_file.stat().st_size + sum(f.stat().st_size for f in external), max_bytes)
    try:
        onnx.checker.check_model(str(model_file), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise invalid(f"the ONNX checker refuses the model: {exc}") from exc
    inputs, outputs = _signature(model)
    session = _cpu_session(model_file)
    _run_example(session, inputs)
    return ValidatedModel(inputs, outputs, _opset_imports(model), list(session.get_providers()))


def _check_format(model_file: Path) -> None:
    """Refuse pickles, PyTorch checkpoints and other formats by their first bytes."""
    with model_file.open("rb") as file:
        head = file.read(16)
    if len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        raise invalid(
            "the file is a Python pickle (e.g. torch.save or joblib output), which runs code "
            "when loaded and is refused; export the model to ONNX (torch.onnx.export, "
            "skl2onnx) and upload the .onnx file"
        )
    if head.startswith(ZIP_MAGIC):
        raise invalid(_zip_message(model_file))
    if head[4:8] == b"ORTM":
        raise invalid("the file is in ONNX Runtime's .ort format; upload the .onnx model")


def _zip_message(model_file: Path) -> str:
    try:
        with zipfile.ZipFile(model_file) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        names = []
    if any(name.endswith((".pkl", "/version", "/constants.pkl")) for name in names):
        return (
            "the file is a PyTorch checkpoint (torch.save or TorchScript zip), which holds "
            "pickles that run code when loaded; export the model with torch.onnx.export and "
            "upload the .onnx file"
        )
    return "the file is a zip archive, not an ONNX model; upload the .onnx file itself"


def _parse(model_file: Path) -> onnx.ModelProto:
    not_onnx = (
        "the file is not an ONNX model ({}); export the model to ONNX (torch.onnx.export, "
        "skl2onnx) and upload the .onnx file"
    )
    try:
        model = onnx.load_model(str(model_file), load_external_data=False)
    except (DecodeError, ValueError) as exc:
        raise invalid(not_onnx.format("it does not parse as an ONNX ModelProto")) from exc
    if model.ir_version < 3 or not model.HasField("graph"):
        raise invalid(not_onnx.format("it has no IR version or graph"))
    return model


def _cpu_session(model_file: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a crafted model must not flood the log
    options.add_session_config_entry("session.load_model_format", "ONNX")
    try:
        session = ort.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except MemoryError:
        raise
    except Exception as exc:  # whatever ONNX Runtime refuses is refused
        if any(sign in str(exc) for sign in MEMORY_SIGNS):
            raise MemoryError(str(exc)) from exc
        raise invalid(f"ONNX Runtime cannot load the model: {exc}") from exc
    return session


def _run_example(session: ort.InferenceSession, inputs: list[TensorSpec]) -> None:
    feeds = {spec.name: np.asarray(example_value(spec), dtype=spec.dtype) for spec in inputs}
    try:
        session.run(None, feeds)
    except MemoryError:
        raise
    except Exception as exc:
        if any(sign in str(exc) for sign in MEMORY_SIGNS):
            raise MemoryError(str(exc)) from exc
        shapes = ", ".join(f"{spec.name} {list(feeds[spec.name].shape)}" for spec in inputs)
        raise invalid(
            f"the model fails on an example input ({shapes}, mid-range values): {exc}; "
            "/predict runs that input when it loads a model, so the graph must answer it"
        ) from exc


def _signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    try:
        return graph_signature(model)
    except UnservableModelError as exc:
        raise invalid(f"the model cannot be served by /predict: {exc}") from exc


def _opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    return {entry.domain: int(entry.version) for entry in model.opset_import}
