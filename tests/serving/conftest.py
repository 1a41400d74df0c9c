"""Fixtures only the serving tests use: job effects, a catalog entry with no model, ONNX uploads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from goshen.config import Settings
from goshen.storage import make_store
from serving.jobs.effects import JobEffects

if TYPE_CHECKING:
    from goshen.db.models import Model


@pytest.fixture
def job_effects(settings: Settings) -> JobEffects:
    """What job transitions cause, with webhook links to this test's store and API URL."""
    return JobEffects(make_store(settings), settings.api_url)


@pytest.fixture
def catalog_model(make_model: Callable[..., Model]) -> Model:
    """A catalog entry for tests that never run its model (no registry behind it)."""
    return make_model()


def _tiny_onnx(path: Path, *, domain: str = "", external: str | None = None) -> Path:
    """y = x · W (x float32 [B, 2], W 2x3), saved at `path`; `domain` puts MatMul in another op
    domain, `external` stores W as external data at that location."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "W")
    if external is not None:
        weights.ClearField("raw_data")
        weights.data_location = TensorProto.EXTERNAL
        weights.external_data.add(key="location", value=external)
        weights.external_data.add(key="offset", value="0")
        weights.external_data.add(key="length", value="24")
    node = helper.make_node("MatMul", ["x", "W"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weights],
    )
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def tiny_onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid two-input-feature ONNX model with no metadata: what a user might upload."""
    return _tiny_onnx(tmp_path_factory.mktemp("tiny-onnx") / "model.onnx")


@pytest.fixture(scope="session")
def bad_onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX files an upload must refuse: external data outside their folder, a custom op domain."""
    root = tmp_path_factory.mktemp("bad-onnx")
    (root / "secret.bin").write_bytes(bytes(24))
    (root / "model").mkdir()
    return {
        "external-data-outside": _tiny_onnx(
            root / "model" / "outside.onnx", external="../secret.bin"
        ),
        "custom-domain": _tiny_onnx(root / "model" / "custom.onnx", domain="com.example"),
    }
