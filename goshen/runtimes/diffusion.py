"""Sampling from class-conditional diffusion models, with a PyTorch or an ONNX Runtime denoiser.

Model space is images in [-1, 1] with one channel; callers get uint8 images in [0, 255].
An exported denoiser takes `sample` float32 [B, 1, H, W], `timestep` int64 [B] and
`class_labels` int64 [B], and returns the predicted noise `noise` float32 [B, 1, H, W].
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

# make_scheduler and SCHEDULERS moved with the step code; they stay importable from here.
from goshen.runtimes.schedulers import SCHEDULERS as SCHEDULERS
from goshen.runtimes.schedulers import make_scheduler as make_scheduler
from goshen.runtimes.schedulers import sampling_steps

StepCallback = Callable[[int, int], bool]
# After each step: (step, total) -> the rows of the batch to stop now.
RowStepCallback = Callable[[int, int], AbstractSet[int]]


class SamplingCanceled(Exception):
    """The caller's `on_step` asked to stop before the last denoising step."""


@dataclass(frozen=True)
class DiffusionModelSpec:
    """What a sampler needs to know about a trained denoiser besides its weights."""

    image_size: int
    num_classes: int
    scheduler_config: dict[str, Any]
    # The label the model was trained on for "no class"; None when it has no guidance.
    null_class: int | None = None
    guidance_scale: float = 1.0
    num_inference_steps: int = 25
    scheduler: str = "ddpm"
    # The class names by class index; None in specs written before models carried them.
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"a spec of {self.num_classes} classes names {len(self.class_names)} of them"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form, for MLflow and the registry."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionModelSpec:
        """The inverse of `to_dict`; older specs, without class names, read as before."""
        return cls(**data)


class Denoiser(Protocol):
    """Predicts the noise in `sample` at `timestep` for `class_labels` (all batched)."""

    device: torch.device

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> torch.Tensor: ...


class TorchDenoiser:
    """A diffusers UNet2DModel (or any module of the same call shape) run by PyTorch."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet.eval()
        self.device = next(unet.parameters()).device

    @torch.inference_mode()
    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> torch.Tensor:
        noise: torch.Tensor = self.unet(
            sample, timestep, class_labels=class_labels, return_dict=False
        )[0]
        return noise


class OnnxDenoiser:
    """An exported denoiser run by ONNX Runtime; inputs and outputs cross as host arrays.

    With `parallel_calls` above 1, each batch is cut into that many slices of rows that run at
    once on the same session (ONNX Runtime sessions take concurrent calls). Meant for a CPU
    session with one intra-op thread: a small UNet's operators are too short to split well
    across threads, so whole slices per core run faster, and every row's result is the same.
    """

    device = torch.device("cpu")

    def __init__(self, session: ort.InferenceSession, parallel_calls: int = 1) -> None:
        self.session = session
        self.parallel_calls = max(1, parallel_calls)
        # The calling thread runs the first slice itself; these threads run the others.
        self._pool = (
            ThreadPoolExecutor(self.parallel_calls - 1, thread_name_prefix="onnx-denoiser")
            if self.parallel_calls > 1
            else None
        )

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], intra_op_threads: int | None = None
    ) -> OnnxDenoiser:
        """Load an exported denoiser on the best provider this machine has.

        On the CPU, `intra_op_threads` (default: all cores) single-threaded slices of each batch
        run in parallel; CUDA sessions get that many intra-op threads, as before.
        """
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return cls(onnx_session(path, intra_op_threads))
        threads = intra_op_threads or os.cpu_count() or 1
        return cls(onnx_session(path, intra_op_threads=1), parallel_calls=threads)

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> torch.Tensor:
        feeds: dict[str, np.ndarray] = {
            "sample": sample.numpy().astype(np.float32, copy=False),
            "timestep": timestep.numpy().astype(np.int64, copy=False),
            "class_labels": class_labels.numpy().astype(np.int64, copy=False),
        }
        return torch.from_numpy(self._run(feeds))

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The predicted noise for `feeds`, one slice of rows per parallel call."""
        batch = len(feeds["sample"])
        slices = min(self.parallel_calls, batch)
        if self._pool is None or slices == 1:
            noise: np.ndarray = self.session.run(["noise"], feeds)[0]
            return noise
        # Row slices of C-contiguous arrays stay contiguous: ONNX Runtime reads them in place.
        edges = [batch * part // slices for part in range(slices + 1)]
        parts = [
            {name: array[start:stop] for name, array in feeds.items()}
            for start, stop in itertools.pairwise(edges)
        ]
        others = [self._pool.submit(self.session.run, ["noise"], part) for part in parts[1:]]
        first = self.session.run(["noise"], parts[0])[0]
        return np.concatenate([first, *(future.result()[0] for future in others)])


def onnx_session(
    path: str | os.PathLike[str], intra_op_threads: int | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime session on CUDA when the installed runtime offers it, else on the CPU."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
    # Sampling makes many small calls; idle threads sleep between them instead of spinning on
    # cores that other work on the machine needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)


def image_seeds(seed: int, count: int) -> list[int]:
    """Independent per-image seeds for a request's `count` images, derived from its one seed.

    A prefix stays the same when `count` grows, and no two requests' seeds overlap the way
    `seed + i` would (request seed 1's second image is not request seed 2's first).
    """
    words = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64)
    return [int(word >> np.uint64(1)) for word in words]  # torch seeds must fit in int64


def sample_images(
    denoiser: Denoiser,
    spec: DiffusionModelSpec,
    class_labels: Sequence[int],
    *,
    seed: int = 0,
    scheduler: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    on_step: StepCallback | None = None,
) -> np.ndarray:
    """Generate one image per class label as uint8 (B, H, W); the same seed gives the same images.

    `on_step(step, total)` runs after every denoising step; returning False cancels the run
    with `SamplingCanceled`. Settings left as None take the spec's defaults.
    """

    def stop_all(step: int, total: int) -> AbstractSet[int]:
        if on_step is not None and on_step(step, total) is False:
            raise SamplingCanceled(f"canceled after step {step} of {total}")
        return frozenset()

    images = sample_batch(
        denoiser,
        spec,
        class_labels,
        image_seeds(seed, len(class_labels)),
        scheduler=scheduler,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        on_step=stop_all,
    )
    return np.stack([images[row] for row in range(len(class_labels))])


def sample_batch(
    denoiser: Denoiser,
    spec: DiffusionModelSpec,
    class_labels: Sequence[int],
    seeds: Sequence[int],
    *,
    scheduler: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    on_step: RowStepCallback | None = None,
) -> dict[int, np.ndarray]:
    """Generate one uint8 (H, W) image per row of (class label, seed), batched in one loop.

    Each row draws its noise from its own seed, so a row's image does not depend on which other
    rows share the batch. `on_step(step, total)` runs after every step and returns the rows to
    stop; they leave the batch at once (no more compute is spent on them). Returns the images of
    the rows that ran to the end, by row index.
    """
    _check_labels(spec, class_labels)
    if len(seeds) != len(class_labels):
        raise ValueError(f"got {len(seeds)} seeds for {len(class_labels)} class labels")
    total = num_inference_steps or spec.num_inference_steps
    steps = sampling_steps(scheduler or spec.scheduler, spec.scheduler_config, total)
    scale = spec.guidance_scale if guidance_scale is None else guidance_scale
    # Noise comes from CPU generators so a seed means the same image on any device.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    shape = (1, 1, spec.image_size, spec.image_size)
    sample = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(denoiser.device)
    labels = torch.tensor(list(class_labels), dtype=torch.int64, device=denoiser.device)
    rows = list(range(len(class_labels)))
    for index, timestep in enumerate(steps.timesteps):
        noise = _guided_noise(denoiser, sample, timestep, labels, spec.null_class, scale)
        sample = steps.step(index, noise, sample, generators)
        stopped = on_step(index + 1, total) if on_step is not None else frozenset()
        if stopped:
            keep = [position for position, row in enumerate(rows) if row not in stopped]
            if not keep:
                return {}
            rows = [rows[position] for position in keep]
            generators = [generators[position] for position in keep]
            picked = torch.tensor(keep, device=sample.device)
            sample, labels = sample.index_select(0, picked), labels.index_select(0, picked)
    return dict(zip(rows, to_uint8(sample), strict=True))


def _check_labels(spec: DiffusionModelSpec, class_labels: Sequence[int]) -> None:
    if not class_labels:
        raise ValueError("class_labels is empty; pass at least one class to generate")
    bad = sorted({label for label in class_labels if not 0 <= label < spec.num_classes})
    if bad:
        raise ValueError(f"class labels {bad} are outside 0..{spec.num_classes - 1}")


def _guided_noise(
    denoiser: Denoiser,
    sample: torch.Tensor,
    timestep: int | torch.Tensor,
    labels: torch.Tensor,
    null_class: int | None,
    scale: float,
) -> torch.Tensor:
    """Classifier-free guidance: one batched call for the conditional and unconditional noise."""
    batch = sample.shape[0]
    if null_class is None or scale == 1.0:
        return denoiser(sample, _timesteps(timestep, batch, sample.device), labels)
    both = denoiser(
        torch.cat([sample, sample]),
        _timesteps(timestep, 2 * batch, sample.device),
        torch.cat([labels, torch.full_like(labels, null_class)]),
    )
    conditional, unconditional = both.to(sample.device).chunk(2)
    return unconditional + scale * (conditional - unconditional)


def _timesteps(timestep: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), int(timestep), dtype=torch.int64, device=device)


def to_uint8(sample: torch.Tensor) -> np.ndarray:
    """Model-space images [B, 1, H, W] in [-1, 1] as uint8 (B, H, W)."""
    pixels = ((sample[:, 0].clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).cpu().numpy()


def to_png_grid(images: np.ndarray, columns: int, scale: int = 4) -> bytes:
    """A PNG of uint8 images (B, H, W) in a grid, each enlarged `scale` times for viewing."""
    count, height, width = images.shape
    rows = -(-count // columns)
    grid = np.zeros((rows * height, columns * width), dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    picture = Image.fromarray(grid)
    picture = picture.resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
