"""Generation speed on CPU: Goshen's ONNX Runtime path against a plain diffusers PyTorch pipeline.

    python bench/digits_generation.py [--quick] [--repeats 15] [--out figures.json]

Both sides run the same random-weight digits UNet (speed does not depend on training) through
whole requests: DDPM, 25 steps, classifier-free guidance 2.0 with the null class, images out.
Goshen's side is what the worker runs (`load_class_conditional` on an exported model folder);
the baseline is a `DiffusionPipeline` in the standard diffusers style, eager float32 PyTorch at
its default thread count. Variants are interleaved within every repeat so load from neighbours
falls on both alike; figures are medians. As a sanity check it also times one UNet forward in
PyTorch, in one ONNX Runtime session on all cores, and through Goshen's denoiser (which runs
slices of the batch in parallel, one core each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import yaml
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from goshen.config import DiffusionEngine
from goshen.runtimes.diffusion import DiffusionModelSpec, image_seeds, onnx_session
from goshen.runtimes.generators import ClassConditionalGenerator, load_class_conditional
from goshen.runtimes.inputs import DigitsInput
from goshen_pipelines.lib.diffusion import DiffusionConfig, build_unet, noise_scheduler_config
from goshen_pipelines.lib.export import export_denoiser

NUM_CLASSES = 10  # the digits; label 10 is the null class guidance steers away from
DIGIT = 7
TARGETS = {1: 3.0, 16: 1.5}  # whole-request speed-up the generation issue asks for, by batch
GOSHEN = "goshen_onnx"
BASELINE = "diffusers_torch"
PLAIN_ONNX = "onnx_session"  # one ONNX Runtime session on all cores, called on the whole batch
# A pause between variants, so one side's worker threads winding down never overlap the other.
SETTLE_SECONDS = 0.05
FORWARDS_PER_BLOCK = 10


class DigitsPipeline(DiffusionPipeline):
    """Class-conditional DDPM sampling with classifier-free guidance, as diffusers writes it."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int],
        null_class: int,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ) -> ImagePipelineOutput:
        """Images for `class_labels`, one each, guided away from `null_class`."""
        size = self.unet.config.sample_size
        shape = (len(class_labels), self.unet.config.in_channels, size, size)
        image = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        labels = torch.tensor(class_labels, device=self.device)
        labels = torch.cat([labels, torch.full_like(labels, null_class)])
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([image] * 2)
            noise_pred = self.unet(model_input, t, class_labels=labels).sample
            conditional, unconditional = noise_pred.chunk(2)
            noise_pred = unconditional + guidance_scale * (conditional - unconditional)
            image = self.scheduler.step(noise_pred, t, image, generator=generator).prev_sample
        image = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image)


@dataclass
class Contenders:
    """Both ways of generating from one set of weights."""

    goshen: ClassConditionalGenerator
    baseline: DigitsPipeline
    spec: DiffusionModelSpec
    plain_session: ort.InferenceSession  # for the single-forward check


def random_unet(config: DiffusionConfig, seed: int = 0) -> UNet2DModel:
    """The digits UNet with seeded random weights."""
    torch.manual_seed(seed)
    return build_unet(config, num_class_embeds=NUM_CLASSES + 1).eval()


def digits_spec(config: DiffusionConfig) -> DiffusionModelSpec:
    """The sampling spec training records for digits-diffusion (DDPM 25, guidance 2.0)."""
    return DiffusionModelSpec(
        image_size=config.image_size,
        num_classes=NUM_CLASSES,
        scheduler_config=noise_scheduler_config(config),
        null_class=NUM_CLASSES,
        guidance_scale=config.guidance_scale,
        num_inference_steps=config.num_inference_steps,
        scheduler=config.scheduler,
    )


def export_model_folder(unet: UNet2DModel, spec: DiffusionModelSpec, folder: Path) -> Path:
    """A model folder as the worker downloads it: model.onnx and MLmodel with the spec."""
    export_denoiser(unet, folder / "model.onnx", NUM_CLASSES)
    mlmodel = {"flavors": {"onnx": {}}, "metadata": {"diffusion": spec.to_dict()}}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


def contenders(config: DiffusionConfig, folder: Path, seed: int = 0) -> Contenders:
    """Goshen's generator and the diffusers pipeline on the same random weights."""
    unet = random_unet(config, seed)
    spec = digits_spec(config)
    goshen = load_class_conditional(export_model_folder(unet, spec, folder), DiffusionEngine.onnx)
    scheduler = DDPMScheduler.from_config(spec.scheduler_config)
    baseline = DigitsPipeline(unet=unet, scheduler=scheduler)
    baseline.set_progress_bar_config(disable=True)
    plain = onnx_session(folder / "model.onnx")
    return Contenders(goshen=goshen, baseline=baseline, spec=spec, plain_session=plain)


def goshen_request(models: Contenders, batch: int, seed: int) -> list[Image.Image]:
    """One digits request of `batch` images through Goshen's generator, as a worker makes it."""
    request = DigitsInput(digit=DIGIT, num_images=batch, seed=seed)
    (images,) = models.goshen.generate([request], on_step=lambda step, total: frozenset())
    assert images is not None
    return images


def baseline_request(models: Contenders, batch: int, seed: int) -> list[Image.Image]:
    """The same request through the diffusers pipeline, with the same per-image seeds."""
    generators = [torch.Generator().manual_seed(s) for s in image_seeds(seed, batch)]
    output = models.baseline(
        class_labels=[DIGIT] * batch,
        null_class=NUM_CLASSES,
        guidance_scale=models.spec.guidance_scale,
        num_inference_steps=models.spec.num_inference_steps,
        generator=generators,
    )
    return output.images


def forward_calls(models: Contenders, batch: int) -> dict[str, Callable[[], object]]:
    """One UNet forward each way on the same inputs (what a sampling step calls)."""
    rng = np.random.default_rng(0)
    size = models.spec.image_size
    sample = rng.standard_normal((batch, 1, size, size), dtype=np.float32)
    timestep = np.full(batch, 500, dtype=np.int64)
    labels = np.full(batch, DIGIT, dtype=np.int64)
    feeds = {"sample": sample, "timestep": timestep, "class_labels": labels}
    tensors = [torch.from_numpy(array) for array in (sample, timestep, labels)]
    denoiser, session, unet = models.goshen.denoiser, models.plain_session, models.baseline.unet

    def torch_forward() -> object:
        with torch.no_grad():
            return unet(tensors[0], tensors[1], class_labels=tensors[2]).sample

    return {
        GOSHEN: lambda: denoiser(*tensors),
        PLAIN_ONNX: lambda: session.run(["noise"], feeds),
        BASELINE: torch_forward,
    }


def interleaved_seconds(
    calls: dict[str, Callable[[int], object]], repeats: int
) -> dict[str, list[float]]:
    """Wall seconds of each call per repeat; the order alternates so neither side always leads."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            time.sleep(SETTLE_SECONDS)
            started = time.perf_counter()
            calls[name](repeat)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def max_pixel_difference(first: Sequence[Image.Image], second: Sequence[Image.Image]) -> int:
    """Largest uint8 difference between two runs' images: both sides compute the same thing."""
    differences = [
        np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
        for a, b in zip(first, second, strict=True)
    ]
    return int(max(differences))


def request_figures(models: Contenders, batch: int, repeats: int) -> dict[str, Any]:
    """Images per second of whole requests at one batch size, each side, and their ratio."""
    calls = {
        GOSHEN: lambda seed: goshen_request(models, batch, seed),
        BASELINE: lambda seed: baseline_request(models, batch, seed),
    }
    for call in calls.values():
        call(0)  # warm-up: first calls allocate arenas and pick kernels
    seconds = interleaved_seconds(calls, repeats)
    per_second = {name: batch / statistics.median(values) for name, values in seconds.items()}
    difference = max_pixel_difference(calls[GOSHEN](0), calls[BASELINE](0))
    return {
        "batch": batch,
        "images_per_second": {name: round(value, 2) for name, value in per_second.items()},
        "median_ms": {name: round(statistics.median(v) * 1e3, 2) for name, v in seconds.items()},
        "all_ms": {name: [round(value * 1e3, 1) for value in v] for name, v in seconds.items()},
        "speedup": round(per_second[GOSHEN] / per_second[BASELINE], 2),
        # Fastest repeat each side: the figure least disturbed by neighbours on a shared machine.
        "best_speedup": round(min(seconds[BASELINE]) / min(seconds[GOSHEN]), 2),
        "target": TARGETS.get(batch),
        "max_pixel_difference": difference,
    }


def forward_figures(models: Contenders, batch: int, repeats: int) -> dict[str, Any]:
    """Median milliseconds of one UNet forward each way at a UNet batch size, and the ratio."""
    calls = forward_calls(models, batch)
    for call in calls.values():
        call()
    # Back-to-back calls, as in a sampling loop: a lone call after a pause measures wake-ups.
    blocks = {
        name: (lambda _, call=call: [call() for _ in range(FORWARDS_PER_BLOCK)])
        for name, call in calls.items()
    }
    seconds = interleaved_seconds(blocks, repeats)
    medians = {name: statistics.median(v) / FORWARDS_PER_BLOCK for name, v in seconds.items()}
    return {
        "unet_batch": batch,
        "median_ms": {name: round(value * 1e3, 3) for name, value in medians.items()},
        "speedup": {
            name: round(medians[BASELINE] / medians[name], 2) for name in (GOSHEN, PLAIN_ONNX)
        },
    }


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot; None off Linux."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = stat.read_text().split()[1:9]
    ticks = sum(int(value) for value in (user, nice, system, irq, softirq, steal))
    return ticks / os.sysconf("SC_CLK_TCK")


def run_benchmark(models: Contenders, batches: Sequence[int], repeats: int) -> dict[str, Any]:
    """Every figure of the benchmark, as one JSON-serializable dict."""
    load_before = os.getloadavg()[0]
    busy_before, own_before, wall_before = busy_cpu_seconds(), time.process_time(), time.time()
    requests = [request_figures(models, batch, repeats) for batch in batches]
    # Guidance doubles the UNet batch, so a request of B images runs forwards of 2B.
    unet_batches = sorted({size for batch in batches for size in (batch, 2 * batch)})
    forwards = [forward_figures(models, batch, repeats) for batch in unet_batches]
    busy_after, own_after, wall_after = busy_cpu_seconds(), time.process_time(), time.time()
    neighbours = None
    if busy_before is not None and busy_after is not None:
        # Cores other processes kept busy meanwhile: what makes a shared-machine run noisy.
        others = (busy_after - busy_before) - (own_after - own_before)
        neighbours = round(max(0.0, others) / (wall_after - wall_before), 2)
    return {
        "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}",
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "neighbour_cores_busy": neighbours,
        "torch_threads": torch.get_num_threads(),
        "providers": models.goshen.denoiser.session.get_providers(),
        # getattr: the same script also measures denoisers from before batch slicing.
        "goshen_parallel_calls": getattr(models.goshen.denoiser, "parallel_calls", 1),
        "scheduler": models.spec.scheduler,
        "num_inference_steps": models.spec.num_inference_steps,
        "guidance_scale": models.spec.guidance_scale,
        "repeats": repeats,
        "requests": requests,
        "forwards": forwards,
    }


def markdown_table(figures: dict[str, Any]) -> str:
    """The whole-request table, then the single-forward table, for BENCHMARKS.md."""
    lines = [
        "| batch | Goshen ONNX img/s | diffusers PyTorch img/s | speed-up | best-run speed-up "
        "| target | max pixel diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in figures["requests"]:
        rate = row["images_per_second"]
        target = f"≥ {row['target']}x" if row["target"] else "—"
        lines.append(
            f"| {row['batch']} | {rate[GOSHEN]:.1f} | {rate[BASELINE]:.1f} | "
            f"**{row['speedup']:.2f}x** | {row['best_speedup']:.2f}x | {target} | "
            f"{row['max_pixel_difference']} |"
        )
    lines += [
        "",
        "| UNet batch | PyTorch ms | ONNX session ms | speed-up | Goshen denoiser ms | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for row in figures["forwards"]:
        ms, speedup = row["median_ms"], row["speedup"]
        lines.append(
            f"| {row['unet_batch']} | {ms[BASELINE]:.2f} | {ms[PLAIN_ONNX]:.2f} | "
            f"{speedup[PLAIN_ONNX]:.2f}x | {ms[GOSHEN]:.2f} | {speedup[GOSHEN]:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse options, run, print the command, the table and (with --out) write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, for a first look")
    parser.add_argument("--repeats", type=int, help="timed requests per side and batch (15)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 15)
    with tempfile.TemporaryDirectory() as folder:
        models = contenders(DiffusionConfig(), Path(folder))
        figures = run_benchmark(models, args.batches, repeats)
    print("$ python " + " ".join(sys.argv))
    before, after = figures["load_average_1m"]
    print(
        f"{figures['machine']}, load {before} -> {after}, other processes kept "
        f"{figures['neighbour_cores_busy']} cores busy, torch threads "
        f"{figures['torch_threads']}, ORT {figures['providers'][0]} in "
        f"{figures['goshen_parallel_calls']} parallel slices, "
        f"{figures['scheduler']} {figures['num_inference_steps']} steps, guidance "
        f"{figures['guidance_scale']}, median of {repeats}\n"
    )
    print(markdown_table(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
