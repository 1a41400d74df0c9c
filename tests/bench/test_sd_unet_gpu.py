"""The SD 1.5 UNet GPU benchmark keeps working: its CPU smoke run, its config, its imports."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "sd_unet_gpu.py"
# The script's own modules beside it, which it imports as `python bench/sd_unet_gpu.py` finds them.
SIBLINGS = ("sd_unet_model", "sd_unet_report")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sd_unet_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPT.parent))  # as running the script puts bench/ first
        spec.loader.exec_module(module)
    return module


def test_the_smoke_run_reports_every_cell(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "smoke.json"
    bench.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    cells = {(r["variant"], r["batch_size"]): r for r in report["results"]}
    assert set(cells) == {("eager", 1), ("goshen", 1), ("eager", 2), ("goshen", 2)}
    for result in cells.values():
        assert "error" not in result, result
        assert result["unet_calls_per_run"] == 1 and result["its"] > 0
    # channels_last and fused QKV compute the same UNet; in float32 only rounding differs.
    assert cells[("goshen", 1)]["max_rel_diff_vs_eager"] < 1e-4
    assert cells[("eager", 1)]["max_rel_diff_vs_eager"] == 0
    assert report["unet_forward_tflop_2_latents"] > 0 and report["skipped"] == []
    assert set(report["summary"]["its_batch_1"]) == {"eager", "goshen"}
    table = capsys.readouterr().out
    assert "| variant | batch | it/s | images/s |" in table and "| goshen | 2 |" in table


def test_the_unet_is_stable_diffusion_15s(bench: ModuleType) -> None:
    flops, parameters = bench.forward_flops(bench.SD15_UNET_CONFIG)
    assert parameters == 859_520_964  # stable-diffusion-v1-5's UNet, to the parameter
    # About 0.8 TFLOP per latent at 64x64: the figure, twice over for guidance.
    assert 1.55e12 < flops < 1.65e12


def test_compiled_variants_run_after_every_eager_cell(bench: ModuleType) -> None:
    variants = [bench.VARIANTS[4], bench.VARIANTS[2], bench.VARIANTS[0]]
    order = [(v.name, batch) for v, batch in bench.cells(variants, [1, 8])]
    assert order == [
        ("eager", 1),
        ("goshen", 1),
        ("eager", 8),
        ("goshen", 8),
        ("compile-max-autotune", 1),
        ("compile-max-autotune", 8),
    ]


def test_the_script_needs_only_torch_and_diffusers() -> None:
    imported: set[str] = set()
    for path in [SCRIPT, *(SCRIPT.with_name(f"{name}.py") for name in SIBLINGS)]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    outside = imported - set(sys.stdlib_module_names) - {"__future__", *SIBLINGS}
    assert outside == {"torch", "diffusers"}


def test_without_a_gpu_only_the_smoke_run_starts(bench: ModuleType) -> None:
    if bench.torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main(["--variants", "eager"])
    with pytest.raises(SystemExit, match=r"no torch\.compile"):
        bench.main(["--smoke", "--variants", "compile-reduce-overhead"])
