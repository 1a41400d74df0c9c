"""Text-to-image generation with diffusers Stable-Diffusion-family pipelines (SD 1.x, 2.x, XL).

A batch of requests runs as one pipeline call with one row per image: each row has its own prompt,
negative prompt and CPU generator, seeded from its request's seed by `image_seeds`, so a row's noise
does not depend on which other requests share the batch. Rows may still differ from a solo run by
rounding (batched kernels of PyTorch and cuDNN/oneDNN pick different algorithms per batch size),
at most one level of 255 in a few pixels on the CPU.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# diffusers' own modules: its top-level names resolve to typeless placeholders for type checkers.
from diffusers.pipelines.auto_pipeline import AutoPipelineForText2Image
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL import Image

from goshen.runtimes.base import ModelFormatError, StepReport
from goshen.runtimes.devices import Device, cpu_device, detect_device
from goshen.runtimes.diffusion import image_seeds
from goshen.runtimes.inputs import GenerationInput, TextToImageInput

PIPELINE_INDEX = "model_index.json"
# Components that `speed_up` switches to channels_last: the convolutional ones.
CONVOLUTIONAL_COMPONENTS = ("unet", "vae")


class _BatchStopped(Exception):
    """Every request of the batch was stopped; raised from the step callback to end the call."""


@dataclass
class _Rows:
    """A batch flattened to one row per image; `owners[row]` is the request the row belongs to."""

    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, requests: Sequence[TextToImageInput]) -> _Rows:
        rows = cls()
        for index, request in enumerate(requests):
            assert request.seed is not None, "the API fills in seeds before queueing"
            count = request.num_images
            rows.prompts += [request.prompt] * count
            rows.negative_prompts += [request.negative_prompt] * count
            rows.seeds += image_seeds(request.seed, count)
            rows.owners += [index] * count
        return rows


class DiffusersGenerator:
    """A diffusers text-to-image pipeline serving one catalog entry."""

    def __init__(self, pipeline: DiffusionPipeline, device: Device) -> None:
        self.pipeline: DiffusionPipeline | None = pipeline
        self.device = device

    @classmethod
    def from_folder(cls, folder: Path, device: str | None = None) -> DiffusersGenerator:
        """Load a saved pipeline: float16 on CUDA (the default when PyTorch sees a GPU), else
        float32 on the CPU; safetensors weights only, never anything from a hub."""
        kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipeline = load_pipeline(folder, torch.float16 if kind == "cuda" else torch.float32)
        pipeline.to(kind)
        if kind == "cuda":
            # Process-wide, and what a GPU worker wants: TF32 for what still runs in float32.
            torch.set_float32_matmul_precision("high")
            speed_up(pipeline)
        found = detect_device() if kind == "cuda" else cpu_device()
        return cls(pipeline, Device(kind, f"{found.name} (diffusers)", found.memory_bytes))

    def generate(
        self, inputs: Sequence[GenerationInput], on_step: StepReport
    ) -> list[list[Image.Image] | None]:
        """Images per request, in order; None for requests `on_step` stopped."""
        if self.pipeline is None:
            raise RuntimeError("this generator is closed; load the model again")
        if not inputs:
            return []
        requests = [_text_to_image(request) for request in inputs]
        first = requests[0]
        if any(r.batch_fields() != first.batch_fields() for r in requests):
            raise ValueError("requests of one batch must share width, height, steps and guidance")
        rows = _Rows.of(requests)
        stopped: set[int] = set()
        try:
            images = self._run(first, rows, _step_callback(on_step, stopped, len(requests)))
        except _BatchStopped:
            return [None] * len(requests)
        return _per_request(images, rows.owners, len(requests), stopped)

    def _run(
        self, first: TextToImageInput, rows: _Rows, callback: Callable[..., Any]
    ) -> list[Image.Image]:
        assert self.pipeline is not None
        # CPU generators: a seed gives the same noise on every device and in every batch.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in rows.seeds]
        output = self.pipeline(  # type: ignore[operator]  # DiffusionPipeline, the base, has no __call__; text-to-image pipelines do
            prompt=rows.prompts,
            negative_prompt=rows.negative_prompts,
            width=first.width,
            height=first.height,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            num_images_per_prompt=1,
            generator=generators,
            callback_on_step_end=callback,
            output_type="pil",
        )
        return list(output.images)

    def close(self) -> None:
        """Drop the pipeline and hand its GPU memory back to the driver."""
        self.pipeline = None
        # Components caught in reference cycles (hooks, compiled modules) go only when collected,
        # and empty_cache can hand back only what is no longer referenced.
        gc.collect()
        if self.device.kind == "cuda":
            torch.cuda.empty_cache()


def load_pipeline(folder: Path, dtype: torch.dtype) -> DiffusionPipeline:
    """The text-to-image pipeline saved in `folder`, on the CPU, progress bars off."""
    index = _pipeline_index(folder)
    options: dict[str, Any] = {}
    if "safety_checker" in index:
        # The platform does not run one; not loading it also keeps its weights off the GPU.
        options = {"safety_checker": None, "requires_safety_checker": False}
    pipeline: DiffusionPipeline = AutoPipelineForText2Image.from_pretrained(
        os.fspath(folder),
        dtype=dtype,
        local_files_only=True,
        use_safetensors=True,
        **options,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def speed_up(pipeline: DiffusionPipeline) -> None:
    """Speed-ups that change no result beyond rounding and cost no warm-up.

    SDPA attention is diffusers' default already. torch.compile is left out: it takes minutes
    per new shape, and a worker's batches change shape with every mix of requests.
    """
    for name in CONVOLUTIONAL_COMPONENTS:
        component = getattr(pipeline, name, None)
        if isinstance(component, torch.nn.Module):
            component.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented; torch's overloads omit it
    unet = getattr(pipeline, "unet", None)
    if unet is not None and hasattr(unet, "fuse_qkv_projections"):
        # One GEMM instead of three per attention block; UNets with added KV projections
        # (IP-Adapter) refuse to fuse and run as they are.
        with contextlib.suppress(ValueError):
            unet.fuse_qkv_projections()


def _pipeline_index(folder: Path) -> dict[str, Any]:
    index = folder / PIPELINE_INDEX
    if not index.is_file():
        raise ModelFormatError(
            f"{folder} has no {PIPELINE_INDEX}; a diffusers runtime serves folders saved by "
            "a pipeline's save_pretrained (register them with log_diffusers_pipeline)"
        )
    found = json.loads(index.read_text())
    if not isinstance(found, dict):
        raise ModelFormatError(f"{index} holds no JSON object; save the pipeline again")
    return found


def _text_to_image(request: GenerationInput) -> TextToImageInput:
    if not isinstance(request, TextToImageInput):
        raise TypeError(
            f"a diffusers generator takes TextToImageInput, got {type(request).__name__}"
        )
    return request


def _step_callback(
    on_step: StepReport, stopped: set[int], requests: int
) -> Callable[[DiffusionPipeline, int, Any, dict[str, Any]], dict[str, Any]]:
    """A `callback_on_step_end` that reports each step and collects the requests to stop."""

    def callback(
        pipeline: DiffusionPipeline, index: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        # Multistep schedulers (PNDM) may run more UNet steps than asked for; report those.
        total = getattr(pipeline, "num_timesteps", None) or len(pipeline.scheduler.timesteps)
        stopped.update(on_step(index + 1, total))
        if stopped.issuperset(range(requests)):
            # diffusers' own interrupt (`pipeline._interrupt = True`) skips the remaining steps
            # but still decodes every row with the VAE; raising ends the call here.
            raise _BatchStopped
        return tensors

    return callback


def _per_request(
    images: list[Image.Image], owners: list[int], requests: int, stopped: set[int]
) -> list[list[Image.Image] | None]:
    results: list[list[Image.Image] | None] = [
        None if index in stopped else [] for index in range(requests)
    ]
    for image, owner in zip(images, owners, strict=True):
        kept = results[owner]
        if kept is not None:
            kept.append(image if image.mode == "RGB" else image.convert("RGB"))
    return results
