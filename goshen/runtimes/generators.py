"""The platform's own image generators (class-conditional digits UNets on ONNX Runtime or
PyTorch) and `load_generator`, which picks the generator for a catalog entry's runtime."""

from __future__ import annotations

import os
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

import yaml
from PIL import Image

from goshen.config import DiffusionEngine
from goshen.db.models import ModelRuntime
from goshen.runtimes.base import ImageGenerator, ModelFormatError, StepReport
from goshen.runtimes.devices import Device, cpu_device, detect_device
from goshen.runtimes.diffusion import (
    DiffusionModelSpec,
    OnnxDenoiser,
    TorchDenoiser,
    image_seeds,
    sample_batch,
)
from goshen.runtimes.inputs import DigitsInput, GenerationInput, LabeledImagesInput

TORCH_WEIGHTS_FOLDER = "extra_files"


class ClassConditionalGenerator:
    """The platform's own generators (digits, and models trained on labeled images): a
    class-conditional UNet and its scheduler."""

    def __init__(self, denoiser: OnnxDenoiser | TorchDenoiser, spec: DiffusionModelSpec) -> None:
        self.denoiser: OnnxDenoiser | TorchDenoiser | None = denoiser
        self.spec = spec
        self.device = _device_of(denoiser)

    def generate(
        self, inputs: Sequence[GenerationInput], on_step: StepReport
    ) -> list[list[Image.Image] | None]:
        if self.denoiser is None:
            raise RuntimeError("this generator is closed; load the model again")
        requests = [_class_conditional(request) for request in inputs]
        first = requests[0]
        if any(r.batch_fields() != first.batch_fields() for r in requests):
            raise ValueError("requests of one batch must share steps and scheduler")
        owners: list[int] = []  # the request each row (one image) belongs to
        labels: list[int] = []
        seeds: list[int] = []
        for index, request in enumerate(requests):
            assert request.seed is not None, "the API fills in seeds before queueing"
            owners += [index] * request.num_images
            labels += [self._class_index(request)] * request.num_images
            seeds += image_seeds(request.seed, request.num_images)

        def rows_to_stop(step: int, total: int) -> AbstractSet[int]:
            stopped = on_step(step, total)
            return {row for row, owner in enumerate(owners) if owner in stopped}

        images = sample_batch(
            self.denoiser,
            self.spec,
            labels,
            seeds,
            scheduler=first.scheduler,
            num_inference_steps=first.num_inference_steps,
            on_step=rows_to_stop,
        )
        results: list[list[Image.Image] | None] = []
        for index in range(len(requests)):
            rows = [row for row, owner in enumerate(owners) if owner == index]
            done = all(row in images for row in rows)
            results.append(
                [Image.fromarray(images[row], mode="L") for row in rows] if done else None
            )
        return results

    def close(self) -> None:
        self.denoiser = None

    def _class_index(self, request: DigitsInput | LabeledImagesInput) -> int:
        """The class a request asks for, by index; a label by name is looked up in the spec."""
        if isinstance(request, DigitsInput):
            return request.digit
        if isinstance(request.label, int):
            return request.label
        names = self.spec.class_names or []
        if request.label not in names:
            raise ValueError(
                f"label {request.label[:100]!r} is not a class of this model version; "
                + (f"its classes are {names[:20]}" if names else "it carries no class names")
            )
        return names.index(request.label)


def _class_conditional(request: GenerationInput) -> DigitsInput | LabeledImagesInput:
    if not isinstance(request, DigitsInput | LabeledImagesInput):
        raise TypeError(
            "a class-conditional generator takes DigitsInput or LabeledImagesInput, got "
            f"{type(request).__name__}"
        )
    return request


def _device_of(denoiser: OnnxDenoiser | TorchDenoiser) -> Device:
    """Where the denoiser computes: ONNX Runtime's first provider, or the module's device."""
    if isinstance(denoiser, OnnxDenoiser):
        on_cuda = denoiser.session.get_providers()[0] == "CUDAExecutionProvider"
        found = detect_device() if on_cuda else cpu_device()
        return Device(found.kind, f"{found.name} (onnxruntime)", found.memory_bytes)
    found = detect_device() if denoiser.device.type == "cuda" else cpu_device()
    return Device(found.kind, f"{found.name} (torch)", found.memory_bytes)


def read_diffusion_spec(folder: Path) -> DiffusionModelSpec:
    """The sampling spec an exported digits model carries in its MLmodel metadata."""
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise ModelFormatError(f"{folder} has no MLmodel file; is it an MLflow ONNX model?")
    metadata = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
    if "diffusion" not in metadata:
        raise ModelFormatError(
            f"{folder} is not a Goshen diffusion model: its MLmodel metadata has no 'diffusion' "
            "spec (register it through the digits pipelines or a diffusion training job)"
        )
    return DiffusionModelSpec.from_dict(metadata["diffusion"])


def load_class_conditional(
    folder: Path, engine: DiffusionEngine, intra_op_threads: int | None = None
) -> ClassConditionalGenerator:
    """A digits generator from a downloaded model version, on ONNX Runtime or PyTorch."""
    spec = read_diffusion_spec(folder)
    if engine is DiffusionEngine.onnx:
        onnx_file = folder / "model.onnx"
        if not onnx_file.is_file():
            raise ModelFormatError(f"{folder} has no model.onnx")
        return ClassConditionalGenerator(OnnxDenoiser.from_path(onnx_file, intra_op_threads), spec)
    return ClassConditionalGenerator(_torch_denoiser(folder / TORCH_WEIGHTS_FOLDER), spec)


def _torch_denoiser(weights: Path) -> TorchDenoiser:
    import torch

    # diffusers' own module: its top-level names resolve to typeless placeholders for type checkers.
    from diffusers.models.unets.unet_2d import UNet2DModel

    if not (weights / "config.json").is_file():
        raise ModelFormatError(
            f"this model version carries no PyTorch weights ({weights} is missing); versions "
            "registered before PyTorch serving existed run on GOSHEN_DIFFUSION_ENGINE=onnx only"
        )
    unet = UNet2DModel.from_pretrained(os.fspath(weights), local_files_only=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchDenoiser(unet.to(device))


def load_generator(
    runtime: ModelRuntime, folder: Path, engine: DiffusionEngine = DiffusionEngine.onnx
) -> ImageGenerator:
    """The generator for a catalog entry's runtime, from its downloaded model folder."""
    if runtime == ModelRuntime.onnx_diffusion:
        return load_class_conditional(folder, engine)
    if runtime == ModelRuntime.diffusers:
        from goshen.runtimes.pipelines import DiffusersGenerator

        return DiffusersGenerator.from_folder(folder)
    raise ModelFormatError(f"runtime {runtime} does not generate images")
