"""Text-to-image pipelines: batching, seeds, per-step reports, stopping, and registering folders.

Every pipeline here is the tiny random-weight Stable Diffusion of `tiny_sd_pipeline`, on the CPU
in float32; the registry round trip goes through a real MLflow server on loopback.
"""

from __future__ import annotations

import secrets
import shutil
import weakref
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from goshen import registry
from goshen.errors import InvalidInputError
from goshen.runtimes.base import ModelFormatError
from goshen.runtimes.inputs import DigitsInput, TextToImageInput
from goshen.runtimes.pipelines import DiffusersGenerator, load_pipeline, speed_up


def never_stop(step: int, total: int) -> AbstractSet[int]:
    return frozenset()


def request(prompt: str = "a red fox in snow", seed: int = 1, **fields: Any) -> TextToImageInput:
    small = {"width": 64, "height": 64, "num_inference_steps": 2, **fields}
    return TextToImageInput(prompt=prompt, seed=seed, **small)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def generator(tiny_sd_pipeline: Path) -> Iterator[DiffusersGenerator]:
    loaded = DiffusersGenerator.from_folder(tiny_sd_pipeline, device="cpu")
    yield loaded
    loaded.close()


class Calls:
    """Counts forward calls of a module while the block runs."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.count = 0

    def __enter__(self) -> Calls:
        self.handle = self.module.register_forward_hook(self._seen)
        return self

    def _seen(self, *_: Any) -> None:
        self.count += 1

    def __exit__(self, *_: object) -> None:
        self.handle.remove()


def test_images_come_per_request_as_rgb_at_the_asked_size(generator: DiffusersGenerator) -> None:
    results = generator.generate(
        [request(num_images=2, width=96, height=64), request("a cat", width=96, height=64)],
        never_stop,
    )
    assert [len(images) for images in results] == [2, 1]
    for image in [*results[0], *results[1]]:
        assert image.mode == "RGB" and image.size == (96, 64)
        assert pixels(image).std() > 1, "random weights still draw something, not a flat image"
    assert generator.device.kind == "cpu" and "(diffusers)" in generator.device.name


def test_guidance_off_and_negative_prompts_change_the_image(generator: DiffusersGenerator) -> None:
    guided, unguided, steered = (
        generator.generate([request(**fields)], never_stop)[0][0]
        for fields in ({}, {"guidance_scale": 1.0}, {"negative_prompt": "blurry"})
    )
    assert not np.array_equal(pixels(guided), pixels(unguided))
    assert not np.array_equal(pixels(guided), pixels(steered))


def test_the_same_seed_gives_the_same_images(generator: DiffusersGenerator) -> None:
    batch = [request(num_images=2, seed=7), request("a cat", seed=8)]
    first = generator.generate(batch, never_stop)
    again = generator.generate(batch, never_stop)
    for images, repeated in zip(first, again, strict=True):
        for image, same in zip(images, repeated, strict=True):
            assert np.array_equal(pixels(image), pixels(same))
    other_seed = generator.generate([request(num_images=2, seed=9)], never_stop)[0]
    assert not np.array_equal(pixels(first[0][0]), pixels(other_seed[0]))
    assert not np.array_equal(pixels(first[0][0]), pixels(first[0][1])), "each image its own seed"


def test_sharing_a_batch_does_not_change_an_image(generator: DiffusersGenerator) -> None:
    alone = generator.generate([request(seed=5)], never_stop)[0][0]
    batch = [request("a lighthouse", seed=6, num_images=2), request(seed=5), request("x", seed=5)]
    shared = generator.generate(batch, never_stop)
    more_images = generator.generate([request(seed=5, num_images=3)], never_stop)[0][0]
    for image in (shared[1][0], more_images):
        # Batched CPU kernels (MKL, oneDNN) round differently per batch size: at most one level.
        difference = np.abs(pixels(image) - pixels(alone))
        assert difference.max() <= 1 and (difference == 0).mean() > 0.98
    assert not np.array_equal(pixels(shared[2][0]), pixels(alone)), "the prompt still counts"


def test_on_step_hears_every_step_once(generator: DiffusersGenerator) -> None:
    heard: list[tuple[int, int]] = []

    def on_step(step: int, total: int) -> AbstractSet[int]:
        heard.append((step, total))
        return frozenset()

    generator.generate(
        [request(num_inference_steps=3), request("a cat", num_inference_steps=3)], on_step
    )
    assert heard == [(1, 3), (2, 3), (3, 3)]


def stop_at(step_to_stop: int, requests: set[int]) -> Callable[[int, int], AbstractSet[int]]:
    def on_step(step: int, total: int) -> AbstractSet[int]:
        return requests if step == step_to_stop else frozenset()

    return on_step


def test_a_stopped_request_gets_none_and_the_others_their_images(
    generator: DiffusersGenerator,
) -> None:
    batch = [request(num_images=2, num_inference_steps=3), request("a cat", num_inference_steps=3)]
    full = generator.generate(batch, never_stop)
    results = generator.generate(batch, stop_at(1, {0}))
    assert results[0] is None
    assert results[1] is not None and len(results[1]) == 1
    assert np.array_equal(pixels(results[1][0]), pixels(full[1][0]))


def test_stopping_every_request_ends_the_run_at_that_step(generator: DiffusersGenerator) -> None:
    pipeline = generator.pipeline
    assert pipeline is not None
    batch = [request(num_inference_steps=5), request("a cat", num_inference_steps=5)]
    with Calls(pipeline.unet) as unet, Calls(pipeline.vae.decoder) as decoder:
        generator.generate(batch, never_stop)
    assert (unet.count, decoder.count) == (5, 1)
    with Calls(pipeline.unet) as unet, Calls(pipeline.vae.decoder) as decoder:
        results = generator.generate(batch, stop_at(2, {0, 1}))
    assert results == [None, None]
    assert (unet.count, decoder.count) == (2, 0), "no UNet step after the stop and no VAE decode"
    assert generator.generate(batch, never_stop)[0] is not None, "the next batch runs in full"


def test_stopping_requests_one_by_one_also_ends_the_run(generator: DiffusersGenerator) -> None:
    pipeline = generator.pipeline
    assert pipeline is not None
    stops = {1: {1}, 3: {0}}
    with Calls(pipeline.unet) as unet:
        results = generator.generate(
            [request(num_inference_steps=6), request("a cat", num_inference_steps=6)],
            lambda step, total: stops.get(step, set()),
        )
    assert results == [None, None] and unet.count == 3


def test_an_error_in_on_step_aborts_the_batch(generator: DiffusersGenerator) -> None:
    def lease_check(step: int, total: int) -> AbstractSet[int]:
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError, match="database gone"):
        generator.generate([request()], lease_check)
    assert generator.generate([request()], never_stop)[0] is not None


def test_batches_must_share_size_steps_and_guidance(generator: DiffusersGenerator) -> None:
    with pytest.raises(ValueError, match="must share"):
        generator.generate([request(), request(width=128)], never_stop)
    with pytest.raises(TypeError, match="TextToImageInput"):
        generator.generate([DigitsInput(digit=3, seed=1)], never_stop)


def test_gpu_speed_ups_change_images_by_rounding_only(tiny_sd_pipeline: Path) -> None:
    plain = DiffusersGenerator.from_folder(tiny_sd_pipeline, device="cpu")
    faster = DiffusersGenerator.from_folder(tiny_sd_pipeline, device="cpu")
    assert faster.pipeline is not None
    speed_up(faster.pipeline)  # what from_folder does on CUDA, here on the CPU
    unet = faster.pipeline.unet
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    batch = [request(num_images=2)]
    for image, sped_up in zip(
        plain.generate(batch, never_stop)[0], faster.generate(batch, never_stop)[0], strict=True
    ):
        assert np.abs(pixels(image) - pixels(sped_up)).max() <= 1


def test_close_lets_go_of_the_weights(tiny_sd_pipeline: Path) -> None:
    loaded = DiffusersGenerator.from_folder(tiny_sd_pipeline)
    assert loaded.pipeline is not None
    unet = weakref.ref(loaded.pipeline.unet)
    loaded.close()
    assert unet() is None, "nothing else holds the UNet, so its (GPU) memory is free"
    with pytest.raises(RuntimeError, match="closed"):
        loaded.generate([request()], never_stop)


def test_a_folder_without_model_index_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"no model_index\.json"):
        DiffusersGenerator.from_folder(tmp_path)


def test_pickle_weights_are_not_loaded_in_place_of_safetensors(
    tiny_sd_pipeline: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_sd_pipeline, tmp_path / "pipeline")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(OSError, match=r"safetensors|diffusion_pytorch_model"):
        load_pipeline(folder, torch.float32)


# Registering pipeline folders in the MLflow registry.


def copy_of(pipeline: Path, tmp_path: Path) -> Path:
    return shutil.copytree(pipeline, tmp_path / "pipeline")


@pytest.mark.parametrize("name", ["unet/model.bin", "weights.ckpt", "a.pt", "b.pth", "c.pkl"])
def test_pickle_weight_files_are_refused(tiny_sd_pipeline: Path, tmp_path: Path, name: str) -> None:
    folder = copy_of(tiny_sd_pipeline, tmp_path)
    (folder / name).write_bytes(b"\x80\x04")
    with pytest.raises(InvalidInputError, match=f"pickle weight files.*{name}") as refused:
        registry.check_pipeline_folder(folder)
    assert refused.value.field == "folder" and "safetensors" in str(refused.value)


def test_folders_that_are_no_pipeline_are_refused(tiny_sd_pipeline: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"no model_index\.json"):
        registry.check_pipeline_folder(tmp_path)
    folder = copy_of(tiny_sd_pipeline, tmp_path)
    (folder / "vae" / "extra.json").symlink_to("/etc/hostname")
    with pytest.raises(InvalidInputError, match="links"):
        registry.check_pipeline_folder(folder)
    (folder / "vae" / "extra.json").unlink()
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    with pytest.raises(InvalidInputError, match=r"no \.safetensors"):
        registry.check_pipeline_folder(folder)


def test_a_saved_pipeline_passes_the_checks(tiny_sd_pipeline: Path) -> None:
    assert registry.check_pipeline_folder(tiny_sd_pipeline) == "StableDiffusionPipeline"


def test_pipeline_folder_finds_a_nested_model_index(tmp_path: Path) -> None:
    assert registry.pipeline_folder(tmp_path) == tmp_path, "nothing to find: the folder itself"
    (tmp_path / "model" / "pipeline").mkdir(parents=True)
    (tmp_path / "model" / "pipeline" / "model_index.json").write_text("{}")
    assert registry.pipeline_folder(tmp_path) == tmp_path / "model" / "pipeline"
    (tmp_path / "model_index.json").write_text("{}")
    assert registry.pipeline_folder(tmp_path) == tmp_path


@pytest.fixture
def tracking(mlflow_server: str) -> Iterator[MlflowClient]:
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    yield MlflowClient(mlflow_server, mlflow_server)
    mlflow.set_tracking_uri("")
    mlflow.set_registry_uri("")


def test_a_registered_pipeline_downloads_and_draws_the_same_images(
    tracking: MlflowClient, tiny_sd_pipeline: Path, generator: DiffusersGenerator, tmp_path: Path
) -> None:
    name = f"tiny-sd-{secrets.token_hex(3)}"
    registered = registry.log_diffusers_pipeline(tiny_sd_pipeline, name, tags={"owner": "tests"})
    assert registered.version == "1" and registered.model_uri == f"models:/{name}/1"
    version = tracking.get_model_version(name, "1")
    assert version.tags[registry.RUNTIME_TAG] == "diffusers"
    assert version.tags[registry.PIPELINE_CLASS_TAG] == "StableDiffusionPipeline"
    assert version.tags["owner"] == "tests" and version.run_id == registered.run_id
    assert tracking.get_run(registered.run_id).info.status == "FINISHED"

    tracking.set_registered_model_alias(name, registry.PRODUCTION, registered.version)
    downloaded = registry.pipeline_folder(registry.download_model(name, destination=tmp_path))
    assert (downloaded / "model_index.json").is_file()
    served = DiffusersGenerator.from_folder(downloaded, device="cpu")
    batch = [request(num_images=2)]
    for image, original in zip(
        served.generate(batch, never_stop)[0], generator.generate(batch, never_stop)[0], strict=True
    ):
        assert np.array_equal(pixels(image), pixels(original))
    served.close()
    assert registry.log_diffusers_pipeline(tiny_sd_pipeline, name).version == "2"


def test_a_refused_folder_registers_nothing(
    tracking: MlflowClient, tiny_sd_pipeline: Path, tmp_path: Path
) -> None:
    folder = copy_of(tiny_sd_pipeline, tmp_path)
    (folder / "text_encoder" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    name = f"refused-{secrets.token_hex(3)}"
    with pytest.raises(InvalidInputError, match=r"pytorch_model\.bin"):
        registry.log_diffusers_pipeline(folder, name)
    assert tracking.search_model_versions(f"name='{name}'") == []
