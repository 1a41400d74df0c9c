"""The generation benchmark still runs end to end (at a tiny size; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from goshen_pipelines.lib.diffusion import DiffusionConfig

SCRIPT = Path(__file__).parents[2] / "bench" / "digits_generation.py"
TINY = DiffusionConfig(block_out_channels=(8, 16), norm_num_groups=4, num_inference_steps=2)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_generation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return bench.contenders(TINY, tmp_path_factory.mktemp("digits-model"))


def test_both_sides_make_the_same_images(bench: ModuleType, models: Any) -> None:
    goshen = bench.goshen_request(models, 3, seed=5)
    baseline = bench.baseline_request(models, 3, seed=5)
    assert [image.size for image in goshen + baseline] == [(8, 8)] * 6
    # Same weights and per-image seeds: only ONNX Runtime's float rounding may differ.
    assert bench.max_pixel_difference(goshen, baseline) <= 2


def test_benchmark_prints_a_row_per_batch(bench: ModuleType, models: Any) -> None:
    figures = bench.run_benchmark(models, batches=[1, 2], repeats=1)
    table = bench.markdown_table(figures)
    assert [row["batch"] for row in figures["requests"]] == [1, 2]
    assert [row["unet_batch"] for row in figures["forwards"]] == [1, 2, 4]
    assert all(row["images_per_second"][bench.GOSHEN] > 0 for row in figures["requests"])
    assert table.count("\n| 1 |") == 2 and "| 4 |" in table
