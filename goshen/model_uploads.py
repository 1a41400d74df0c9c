"""User-uploaded ONNX models, checked in a child process before the platform keeps any of them.

The child runs with its address space capped (RLIMIT_AS) and is killed after a timeout, so a file
built to exhaust memory or to take forever to load costs one bounded process. It checks, in order:

- the file is a serialized ONNX ModelProto: pickles, PyTorch checkpoints (zip or pickle) and
  other formats are refused by their first bytes, before anything parses them;
- every op is standard: node domains and op-set imports are "" / "ai.onnx" or "ai.onnx.ml", in
  the main graph, every If/Loop/Scan subgraph and every local function. A node may also call a
  function the model itself defines, in a domain of its own; that domain may not be one ONNX
  Runtime ships kernels for (com.microsoft, ai.onnx.*, ...), whose kernel would run instead of
  the function's body. "ai.onnx.preview.training" is refused: it holds training ops only;
- external data: every tensor stored outside the file (initializers, sparse initializers,
  Constant and other tensor attributes, function attribute defaults, in subgraphs too) names a
  relative `location` without "..", NUL or backslashes that resolves, links followed, to an
  existing file inside the model file's folder, and its offset and length lie within that file;
  the model and its external files together fit in `max_bytes`;
- `onnx.checker.check_model(full_check=True)`, then ONNX Runtime builds a CPU session;
- every input and output is a numeric or boolean tensor, which /predict can carry in JSON;
- the model answers its example input (one row, as GET /v1/models/{name} will publish it), here
  under the caps: a graph built to allocate without bound or to loop forever on being run fails
  in this child, not later in the API process that serves it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from goshen.errors import GoshenError, InvalidInputError, PayloadTooLargeError
from goshen.runtimes.onnx_models import (
    TensorSpec,
    UnservableModelError,
    example_value,
    graph_signature,
    public_schema,
)

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# Domains ONNX Runtime (and its extensions) register kernels in; no local function may claim one.
RUNTIME_DOMAIN_PREFIXES = ("ai.onnx", "com.microsoft", "com.ms.", "org.pytorch", "com.intel")
PICKLE_PROTOCOLS = range(2, 6)  # pickle.dumps(protocol >= 2) starts with b"\x80" and the protocol
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_MESSAGE_LIMIT = 600
_STDERR_TAIL = 4000
# The child is this module's `child_main`. It sets its own memory cap before importing anything
# that reads the model: subprocess's preexec_fn runs Python between fork and exec, which the
# Python docs call unsafe in a threaded process, and the API server that calls this is one.
_CHILD = (
    "import resource, sys\n"
    "cap = int(sys.argv[2])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
    "from goshen.model_uploads import child_main\n"
    "child_main(sys.argv[1], int(sys.argv[3]))\n"
)
# One thread per math library: each reserves address space the cap would otherwise count.
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_MEMORY_SIGNS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "Failed to allocate")


@dataclass(frozen=True)
class ModelUploadLimits:
    """Bounds on one upload's check: file bytes (with external data), child memory, seconds.

    `memory_bytes` caps the child's whole address space, the checker's own included (Python,
    onnx and ONNX Runtime take about 200 MiB of it before the model is read).
    """

    max_bytes: int
    memory_bytes: int
    timeout_seconds: float


@dataclass(frozen=True)
class ValidatedModel:
    """What the check learned about an accepted model."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset_imports: dict[str, int]
    providers: list[str]

    def public_schema(self) -> dict[str, Any]:
        """The schema /predict publishes for it, without loading the model in this process."""
        return public_schema(self.inputs, self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """The child's verdict for an accepted model (JSON)."""
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "opset_imports": self.opset_imports,
            "providers": self.providers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidatedModel:
        """The inverse of `to_dict`."""
        return cls(
            [TensorSpec.from_dict(spec) for spec in data["inputs"]],
            [TensorSpec.from_dict(spec) for spec in data["outputs"]],
            {str(domain): int(version) for domain, version in data["opset_imports"].items()},
            [str(provider) for provider in data["providers"]],
        )


def validate_onnx_upload(model_file: Path, limits: ModelUploadLimits) -> ValidatedModel:
    """Check an uploaded .onnx in a capped child process; InvalidInputError(field="file") or
    PayloadTooLargeError when it is refused, saying what is wrong and what to do."""
    model_file = Path(model_file)
    if model_file.is_symlink() or not model_file.is_file():
        raise InvalidInputError("the upload is not a regular file", field="file")
    _check_size(model_file.stat().st_size, limits.max_bytes)
    verdict = _run_child(model_file, limits)
    if verdict.get("ok"):
        return ValidatedModel.from_dict(verdict["model"])
    message = str(verdict.get("error", "the model was refused"))
    if verdict.get("status") == "too_large":
        raise PayloadTooLargeError(message)
    if verdict.get("status") == "memory":
        raise InvalidInputError(_memory_message(limits), field="file")
    raise InvalidInputError(message, field="file")


def _run_child(model_file: Path, limits: ModelUploadLimits) -> dict[str, Any]:
    """The child's JSON verdict; a refusal verdict when it timed out or died without one."""
    command = [
        sys.executable,
        "-P",  # the current folder stays off sys.path
        "-c",
        _CHILD,
        str(model_file),
        str(limits.memory_bytes),
        str(limits.max_bytes),
    ]
    # A file, not a pipe: whatever the runtime logs, the parent keeps a bounded tail of it.
    with tempfile.TemporaryFile() as stderr:
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=limits.timeout_seconds,
                env={**os.environ, **_CHILD_ENV},
                check=False,
            )
        except subprocess.TimeoutExpired:
            return _refused(
                f"checking the model took longer than {limits.timeout_seconds:g} s; a model "
                "that slow to load is refused (simplify it, or ask an operator to raise "
                "GOSHEN_MODEL_VALIDATION_TIMEOUT_SECONDS)"
            )
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - _STDERR_TAIL))
        errors = stderr.read().decode(errors="replace")
    try:
        return json.loads(done.stdout)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _died(done.returncode, errors)


def _died(returncode: int, errors: str) -> dict[str, Any]:
    """The verdict for a child that ended without writing one: out of memory, or a crash."""
    # SIGKILL is the kernel's OOM killer (a container's memory limit below the cap).
    if any(sign in errors for sign in _MEMORY_SIGNS) or returncode == -signal.SIGKILL:
        return {"ok": False, "status": "memory"}
    how = (
        f"signal {signal.Signals(-returncode).name}"
        if returncode < 0
        else f"exit status {returncode}"
    )
    return _refused(
        f"checking the model crashed ONNX tooling ({how}); the file is refused. Re-export it "
        "with a current exporter and check it with onnx.checker.check_model"
    )


def _memory_message(limits: ModelUploadLimits) -> str:
    return (
        f"checking the model needed more than {limits.memory_bytes // 2**20} MiB of memory, the "
        "limit for model checks; upload a smaller model (or ask an operator to raise "
        "GOSHEN_MODEL_VALIDATION_MEMORY_BYTES)"
    )


def _refused(message: str, status: str = "invalid") -> dict[str, Any]:
    return {"ok": False, "status": status, "error": message}


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"the model takes {size} bytes (with its external data), over the limit of "
            f"{max_bytes} (GOSHEN_MAX_MODEL_UPLOAD_BYTES)"
        )


# Everything below runs in the child.


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
        verdict = _refused(_public(exc, model_file), "too_large")
    except GoshenError as exc:
        verdict = _refused(_public(exc, model_file))
    except Exception as exc:  # noqa: BLE001 - any failure to check a model is a refusal of it
        verdict = _refused(f"the model could not be checked: {_public(exc, model_file)}")
    verdict_out.write(json.dumps(verdict))
    verdict_out.flush()


def _public(exc: BaseException, model_file: Path) -> str:
    """An error's text as the uploader may see it: no server paths, bounded length."""
    message = str(exc).replace(f"{model_file.parent}{os.sep}", "").replace(str(model_file), "")
    return message[:_MESSAGE_LIMIT]


def check_model_file(model_file: Path, max_bytes: int) -> ValidatedModel:
    """Every check of the module docstring, in this process; raises the refusal.

    `validate_onnx_upload` runs it in the capped child: never call it on an upload directly.
    """
    _check_format(model_file)
    model = _parse(model_file)
    _check_domains(model)
    external = _check_external_data(model, model_file.parent)
    _check_size(model_file.stat().st_size + sum(f.stat().st_size for f in external), max_bytes)
    try:
        onnx.checker.check_model(str(model_file), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise _invalid(f"the ONNX checker refuses the model: {exc}") from exc
    inputs, outputs = _signature(model)
    session = _cpu_session(model_file)
    _run_example(session, inputs)
    return ValidatedModel(inputs, outputs, _opset_imports(model), list(session.get_providers()))


def _invalid(message: str) -> InvalidInputError:
    return InvalidInputError(message, field="file")


def _check_format(model_file: Path) -> None:
    """Refuse pickles, PyTorch checkpoints and other formats by their first bytes."""
    with model_file.open("rb") as file:
        head = file.read(16)
    if len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        raise _invalid(
            "the file is a Python pickle (e.g. torch.save or joblib output), which runs code "
            "when loaded and is refused; export the model to ONNX (torch.onnx.export, "
            "skl2onnx) and upload the .onnx file"
        )
    if head.startswith(ZIP_MAGIC):
        raise _invalid(_zip_message(model_file))
    if head[4:8] == b"ORTM":
        raise _invalid("the file is in ONNX Runtime's .ort format; upload the .onnx model")


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
        raise _invalid(not_onnx.format("it does not parse as an ONNX ModelProto")) from exc
    if model.ir_version < 3 or not model.HasField("graph"):
        raise _invalid(not_onnx.format("it has no IR version or graph"))
    return model


def _graphs(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Every graph of the model, with where it sits: the main graph, training-info graphs, and
    the subgraphs (If/Loop/Scan bodies) of any graph's or local function's nodes."""
    stack = [("the main graph", model.graph)]
    for index, info in enumerate(model.training_info):
        stack += [
            (f"training info {index}", info.initialization),
            (f"training {index}", info.algorithm),
        ]
    for function in model.functions:
        for node in function.node:
            stack += _subgraphs(node, _function_place(function))
    while stack:
        where, graph = stack.pop()
        yield where, graph
        for node in graph.node:
            stack += _subgraphs(node, where)


def _subgraphs(node: onnx.NodeProto, where: str) -> list[tuple[str, onnx.GraphProto]]:
    inside = f"{where} > {node.op_type} node {node.name!r}"
    found = []
    for attribute in node.attribute:
        # Fields are read whatever the attribute's declared type says.
        if attribute.HasField("g"):
            found.append((f"{inside} attribute {attribute.name}", attribute.g))
        found += [(f"{inside} attribute {attribute.name}", graph) for graph in attribute.graphs]
    return found


def _function_place(function: onnx.FunctionProto) -> str:
    return f"local function {function.domain}.{function.name}"


def _nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto]]:
    for where, graph in _graphs(model):
        for node in graph.node:
            yield where, node
    for function in model.functions:
        for node in function.node:
            yield _function_place(function), node


def _check_domains(model: onnx.ModelProto) -> None:
    """Standard op domains only, or calls of the model's own functions; see the docstring."""
    functions = {(function.domain, function.name) for function in model.functions}
    for domain, name in functions:
        if domain in STANDARD_DOMAINS or domain.startswith(RUNTIME_DOMAIN_PREFIXES):
            raise _invalid(
                f"the model defines function {name!r} in domain {domain!r}, which belongs to "
                "ONNX or ONNX Runtime; give local functions a domain of their own"
            )
    for where, node in _nodes(model):
        if node.domain in STANDARD_DOMAINS or (node.domain, node.op_type) in functions:
            continue
        raise _invalid(
            f"op {node.op_type} of domain {node.domain!r} (node {node.name!r}, in {where}) is not "
            "a standard ONNX op; only the standard domains '' (ai.onnx) and ai.onnx.ml are "
            "served. Export without custom or contrib ops (e.g. com.microsoft ops that ONNX "
            "Runtime's offline optimizer fuses in: save the model before optimizing it)"
        )
    own = {domain for domain, _ in functions}
    imports = [("the model", entry) for entry in model.opset_import]
    for function in model.functions:
        imports += [(_function_place(function), entry) for entry in function.opset_import]
    for where, entry in imports:
        if entry.domain not in STANDARD_DOMAINS and entry.domain not in own:
            raise _invalid(
                f"{where} imports op set domain {entry.domain!r}, which is not a standard ONNX "
                "domain; only '' (ai.onnx) and ai.onnx.ml are served"
            )


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor the model stores, with where it sits (see the module docstring)."""
    for where, graph in _graphs(model):
        for tensor in graph.initializer:
            yield where, tensor
        for sparse in graph.sparse_initializer:
            yield where, sparse.values
            yield where, sparse.indices
    attributes = [(where, a) for where, node in _nodes(model) for a in node.attribute]
    for function in model.functions:
        attributes += [(_function_place(function), a) for a in function.attribute_proto]
    for where, attribute in attributes:
        if attribute.HasField("t"):
            yield where, attribute.t
        yield from ((where, tensor) for tensor in attribute.tensors)
        sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for tensor in [*sparse, *attribute.sparse_tensors]:
            yield where, tensor.values
            yield where, tensor.indices


def _check_external_data(model: onnx.ModelProto, folder: Path) -> set[Path]:
    """The external data files the model reads, each checked to lie inside `folder`."""
    files: set[Path] = set()
    for where, tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.add(_external_file(tensor, where, folder))
    return files


def _external_file(tensor: onnx.TensorProto, where: str, folder: Path) -> Path:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    shown = repr(location[:200])

    def refuse(reason: str) -> InvalidInputError:
        return _invalid(
            f"tensor {tensor.name!r} (in {where}) keeps its data in {shown}, which {reason}; "
            "external data must be files in the model's own folder, named by relative paths "
            "(onnx.save_model(model, path, save_as_external_data=True, location='weights.bin'))"
        )

    if not location or "\0" in location or "\\" in location:
        raise refuse("is empty or holds NUL or backslash characters")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).drive:
        raise refuse("is an absolute path")
    if ".." in location.split("/"):
        raise refuse("climbs out of the folder with '..'")
    base = folder.resolve()
    try:
        path = (folder / location).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise refuse("does not exist") from exc
    if not path.is_relative_to(base):
        raise refuse("resolves (through a link) to a file outside the model's folder")
    if not path.is_file():
        raise refuse("is not a regular file")
    _check_extent(entries, path.stat().st_size, refuse)
    return path


def _check_extent(
    entries: dict[str, str], size: int, refuse: Callable[[str], InvalidInputError]
) -> None:
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else size - offset
    except ValueError as exc:
        raise refuse("comes with an offset or length that is not a whole number") from exc
    if offset < 0 or length < 0 or offset + length > size:
        raise refuse(f"is {size} bytes, shorter than the offset and length it is given")


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
        if any(sign in str(exc) for sign in _MEMORY_SIGNS):
            raise MemoryError(str(exc)) from exc
        raise _invalid(f"ONNX Runtime cannot load the model: {exc}") from exc
    return session


def _run_example(session: ort.InferenceSession, inputs: list[TensorSpec]) -> None:
    feeds = {spec.name: np.asarray(example_value(spec), dtype=spec.dtype) for spec in inputs}
    try:
        session.run(None, feeds)
    except MemoryError:
        raise
    except Exception as exc:
        if any(sign in str(exc) for sign in _MEMORY_SIGNS):
            raise MemoryError(str(exc)) from exc
        shapes = ", ".join(f"{spec.name} {list(feeds[spec.name].shape)}" for spec in inputs)
        raise _invalid(
            f"the model fails on an example input ({shapes}, mid-range values): {exc}; "
            "/predict runs that input when it loads a model, so the graph must answer it"
        ) from exc


def _signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    try:
        return graph_signature(model)
    except UnservableModelError as exc:
        raise _invalid(f"the model cannot be served by /predict: {exc}") from exc


def _opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    return {entry.domain: int(entry.version) for entry in model.opset_import}
