"""The sampling loop: seeding, cancellation, guidance, schedulers, and PNG grids."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from goshen.runtimes import diffusion
from goshen.runtimes.diffusion import (
    DiffusionModelSpec,
    SamplingCanceled,
    TorchDenoiser,
    sample_images,
    to_png_grid,
)


@pytest.fixture(scope="module")
def denoiser() -> TorchDenoiser:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        num_class_embeds=4,
    )
    return TorchDenoiser(unet)


@pytest.fixture
def spec() -> DiffusionModelSpec:
    config = dict(DDPMScheduler(num_train_timesteps=100, timestep_spacing="trailing").config)
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    return DiffusionModelSpec(
        image_size=8,
        num_classes=3,
        scheduler_config=config,
        null_class=3,
        guidance_scale=2.0,
        num_inference_steps=4,
    )


def test_images_are_uint8_one_per_label(denoiser: TorchDenoiser, spec: DiffusionModelSpec) -> None:
    images = sample_images(denoiser, spec, [0, 1, 2, 2], seed=1)
    assert images.shape == (4, 8, 8)
    assert images.dtype == np.uint8


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_same_seed_same_images(
    denoiser: TorchDenoiser, spec: DiffusionModelSpec, scheduler: str
) -> None:
    first = sample_images(denoiser, spec, [0, 1], seed=7, scheduler=scheduler)
    again = sample_images(denoiser, spec, [0, 1], seed=7, scheduler=scheduler)
    other = sample_images(denoiser, spec, [0, 1], seed=8, scheduler=scheduler)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_on_step_reports_every_step(denoiser: TorchDenoiser, spec: DiffusionModelSpec) -> None:
    calls: list[tuple[int, int]] = []
    sample_images(denoiser, spec, [0], num_inference_steps=5, on_step=lambda *a: calls.append(a))
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_on_step_false_cancels_at_that_step(
    denoiser: TorchDenoiser, spec: DiffusionModelSpec
) -> None:
    steps: list[int] = []

    def stop_at_two(step: int, total: int) -> bool:
        steps.append(step)
        return step < 2

    with pytest.raises(SamplingCanceled, match="after step 2 of 4"):
        sample_images(denoiser, spec, [0], on_step=stop_at_two)
    assert steps == [1, 2]


class RecordingDenoiser:
    """Returns the class label as the noise, and records the labels of each call."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> torch.Tensor:
        self.calls.append(class_labels.tolist())
        assert timestep.shape == class_labels.shape == (sample.shape[0],)
        return class_labels.float().view(-1, 1, 1, 1).expand_as(sample)


def test_guidance_batches_conditional_and_null_labels(spec: DiffusionModelSpec) -> None:
    recorder = RecordingDenoiser()
    sample_images(recorder, spec, [1, 2], num_inference_steps=1)
    assert recorder.calls == [[1, 2, 3, 3]]


def test_guidance_scale_one_makes_a_plain_conditional_call(spec: DiffusionModelSpec) -> None:
    recorder = RecordingDenoiser()
    sample_images(recorder, spec, [1, 2], num_inference_steps=1, guidance_scale=1.0)
    assert recorder.calls == [[1, 2]]


def test_guidance_extrapolates_from_unconditional(spec: DiffusionModelSpec) -> None:
    # Noise is the label value: conditional 1, null 3; scale 2 gives 3 + 2 * (1 - 3) = -1.
    noise = diffusion._guided_noise(
        RecordingDenoiser(), torch.zeros(1, 1, 8, 8), torch.tensor(5), torch.tensor([1]), 3, 2.0
    )
    assert torch.all(noise == -1)


def test_labels_outside_the_model_are_refused(
    denoiser: TorchDenoiser, spec: DiffusionModelSpec
) -> None:
    with pytest.raises(ValueError, match=r"\[3\] are outside 0..2"):
        sample_images(denoiser, spec, [0, 3])
    with pytest.raises(ValueError, match="empty"):
        sample_images(denoiser, spec, [])


def test_unknown_scheduler_is_named(denoiser: TorchDenoiser, spec: DiffusionModelSpec) -> None:
    with pytest.raises(ValueError, match=r"'euler'.*'ddim', 'ddpm'"):
        sample_images(denoiser, spec, [0], scheduler="euler")


def test_spec_round_trips_through_json(spec: DiffusionModelSpec) -> None:
    assert DiffusionModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_png_grid_places_images_in_rows() -> None:
    images = np.stack([np.full((8, 8), value, dtype=np.uint8) for value in (10, 20, 30)])
    picture = Image.open(io.BytesIO(to_png_grid(images, columns=2, scale=2)))
    pixels = np.asarray(picture)
    assert picture.format == "PNG"
    assert pixels.shape == (32, 32)
    assert (pixels[0, 0], pixels[0, 16], pixels[16, 0], pixels[16, 16]) == (10, 20, 30, 0)


def test_onnx_session_prefers_cuda_when_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: dict[str, object] = {}

    def fake_session(path: str, sess_options: object, providers: list[str]) -> object:
        chosen.update(providers=providers, options=sess_options)
        return object()

    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    diffusion.onnx_session("model.onnx", intra_op_threads=3)
    assert chosen["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    options = chosen["options"]
    assert options.intra_op_num_threads == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    diffusion.onnx_session("model.onnx")
    assert chosen["providers"] == ["CPUExecutionProvider"]


class RowMath(torch.nn.Module):
    """A denoiser-shaped graph whose every output row depends on that row's inputs only."""

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> torch.Tensor:
        rows = (-1, 1, 1, 1)
        return sample * timestep.view(rows).float() + class_labels.view(rows).float()


@pytest.fixture(scope="module")
def row_math_onnx(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("onnx") / "rows.onnx")
    names = ["sample", "timestep", "class_labels"]
    torch.onnx.export(
        RowMath(),
        (torch.randn(3, 1, 8, 8), torch.arange(3), torch.arange(3)),
        path,
        input_names=names,
        output_names=["noise"],
        dynamic_axes={name: {0: "batch"} for name in [*names, "noise"]},
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_parallel_slices_return_the_whole_batch_in_order(row_math_onnx: str, batch: int) -> None:
    session = diffusion.onnx_session(row_math_onnx, intra_op_threads=1)
    sliced = diffusion.OnnxDenoiser(session, parallel_calls=3)
    sample = torch.randn(batch, 1, 8, 8)
    timestep, labels = torch.arange(batch) + 1, torch.arange(batch) % 3
    expected = RowMath()(sample, timestep, labels)
    assert torch.equal(sliced(sample, timestep, labels), expected)


def test_cpu_denoisers_slice_batches_and_cuda_ones_do_not(
    row_math_onnx: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert diffusion.OnnxDenoiser.from_path(row_math_onnx, intra_op_threads=2).parallel_calls == 2

    threads: list[int] = []
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(
        diffusion, "onnx_session", lambda path, intra_op_threads: threads.append(intra_op_threads)
    )
    cuda = diffusion.OnnxDenoiser.from_path(row_math_onnx, intra_op_threads=3)
    assert (cuda.parallel_calls, threads) == (1, [3])
