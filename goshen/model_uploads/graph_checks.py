"""Checks of an ONNX graph's structure: standard op domains only, external data in its folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx

from goshen.errors import InvalidInputError
from goshen.model_uploads.verdict import invalid

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# Domains ONNX Runtime (and its extensions) register kernels in; no local function may claim one.
RUNTIME_DOMAIN_PREFIXES = ("ai.onnx", "com.microsoft", "com.ms.", "org.pytorch", "com.intel")


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


def check_domains(model: onnx.ModelProto) -> None:
    """Standard op domains only, or calls of the model's own functions; see the docstring."""
    functions = {(function.domain, function.name) for function in model.functions}
    for domain, name in functions:
        if domain in STANDARD_DOMAINS or domain.startswith(RUNTIME_DOMAIN_PREFIXES):
            raise invalid(
                f"the model defines function {name!r} in domain {domain!r}, which belongs to "
                "ONNX or ONNX Runtime; give local functions a domain of their own"
            )
    for where, node in _nodes(model):
        if node.domain in STANDARD_DOMAINS or (node.domain, node.op_type) in functions:
            continue
        raise invalid(
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
            raise invalid(
                f"{where} imports op set domain {entry.domain!r}, which is not a standard ONNX "
                "domain; only '' (ai.onnx) and ai.onnx.ml are served"
            )


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor the model stores, with where it sits (see the package docstring)."""
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
        own_sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for sparse in [*own_sparse, *attribute.sparse_tensors]:
            yield where, sparse.values
            yield where, sparse.indices


def check_external_data(model: onnx.ModelProto, folder: Path) -> set[Path]:
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
        return invalid(
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
