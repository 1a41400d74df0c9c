"""Train both built-in digits models with default configs, time each phase, measure quality.

    python bench/train_digits.py [--per-class 50] [--grid samples.png] [--diffusion epochs=30]

Quality is the share of generated digits that the digits classifier assigns to the requested
class, sampled through the exported ONNX denoiser with each scheduler. Prints a table for
BENCHMARKS.md and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from goshen.runtimes.diffusion import OnnxDenoiser, to_png_grid
from goshen_pipelines.lib import export
from goshen_pipelines.lib.classifier import (
    DIGITS_CLASSIFIER_CONFIG,
    TrainedTabularModel,
    train_classifier,
)
from goshen_pipelines.lib.diffusion import DiffusionConfig, TrainedDiffusion, train_diffusion
from goshen_pipelines.lib.digits import NUM_DIGIT_CLASSES, classifier_features, load_digit_images
from goshen_pipelines.lib.quality import class_match_rate
from goshen_pipelines.lib.trainer import training_threads


@contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Record the wall time of the block under `phase`."""
    started = time.perf_counter()
    yield
    seconds[phase] = round(time.perf_counter() - started, 2)
    print(f"  {phase}: {seconds[phase]:.1f} s", flush=True)


def config_with(config: DiffusionConfig, overrides: list[str]) -> DiffusionConfig:
    """Apply KEY=VALUE overrides (Python literals) to a config."""
    known = {item.name for item in dataclasses.fields(config)}
    changes = {}
    for override in overrides:
        key, _, value = override.partition("=")
        if key not in known:
            raise SystemExit(f"unknown DiffusionConfig field {key!r}; known: {sorted(known)}")
        changes[key] = ast.literal_eval(value)
    return dataclasses.replace(config, **changes)


def progress(model: str, quiet: bool) -> Callable[[int, dict[str, float]], None] | None:
    """An on_epoch_end callback that prints one line per epoch, or None when quiet."""

    def report(epoch: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{key}={value:.4g}" for key, value in metrics.items())
        print(f"    {model} epoch {epoch}: {shown}", flush=True)

    return None if quiet else report


def export_both(
    diffusion: TrainedDiffusion,
    classifier: TrainedTabularModel,
    features: np.ndarray,
    folder: Path,
) -> tuple[Path, dict[str, float]]:
    """Export both models; the denoiser's path and each model's parity."""
    unet_path = export.export_denoiser(diffusion.unet, folder / "unet.onnx", NUM_DIGIT_CLASSES)
    classifier_path = export.export_tabular_model(classifier, folder / "classifier.onnx", features)
    denoiser_inputs = export.denoiser_inputs(diffusion.spec.image_size, NUM_DIGIT_CLASSES)
    parity = {
        "denoiser": export.parity(
            export.DenoiserForExport(diffusion.unet), unet_path, denoiser_inputs
        ),
        "classifier": export.parity(
            classifier.export_module(), classifier_path, export.tabular_inputs(features)
        ),
    }
    return unet_path, parity


def main() -> None:
    """Run the benchmark and print its table and JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50, help="images generated per digit")
    parser.add_argument("--grid", type=Path, help="write a PNG of generated samples here")
    parser.add_argument("--diffusion", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args()
    diffusion_config = config_with(DiffusionConfig(), args.diffusion)
    seconds: dict[str, float] = {}
    images, labels = load_digit_images()
    features = classifier_features(images)

    print(f"cpus: {os.cpu_count()}, training threads: {training_threads()}", flush=True)
    with timed(seconds, "train_classifier"):
        classifier = train_classifier(
            features, labels, DIGITS_CLASSIFIER_CONFIG, progress("classifier", args.quiet)
        )
    with timed(seconds, "train_diffusion"):
        diffusion = train_diffusion(
            images,
            labels,
            NUM_DIGIT_CLASSES,
            diffusion_config,
            progress("diffusion", args.quiet),
        )
    quality = {}
    with tempfile.TemporaryDirectory() as folder:
        with timed(seconds, "export_and_parity"):
            unet_path, parity = export_both(diffusion, classifier, features, Path(folder))
        denoiser = OnnxDenoiser.from_path(unet_path)
        for scheduler in ("ddpm", "ddim"):
            with timed(seconds, f"quality_{scheduler}"):
                quality[scheduler] = class_match_rate(
                    denoiser,
                    diffusion.spec,
                    classifier.predict,
                    args.per_class,
                    scheduler=scheduler,
                )
    if args.grid:
        default = quality[diffusion.spec.scheduler]
        args.grid.write_bytes(to_png_grid(default.images[: NUM_DIGIT_CLASSES * 8], 10))
    figures = {
        "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}",
        "training_threads": training_threads(),
        "seconds": seconds,
        "train_seconds_total": round(seconds["train_classifier"] + seconds["train_diffusion"], 2),
        "classifier_val_accuracy": round(classifier.metrics["val_accuracy"], 4),
        "class_match_rate": {name: round(result.rate, 4) for name, result in quality.items()},
        "class_match_per_class": {
            name: {label: round(rate, 3) for label, rate in result.per_class.items()}
            for name, result in quality.items()
        },
        "generated_per_scheduler": NUM_DIGIT_CLASSES * args.per_class,
        "num_inference_steps": diffusion.spec.num_inference_steps,
        "guidance_scale": diffusion.spec.guidance_scale,
        "parity_max_abs_diff": parity,
        "diffusion_config": dataclasses.asdict(diffusion_config),
        "classifier_config": dataclasses.asdict(DIGITS_CLASSIFIER_CONFIG),
    }
    print_table(figures)


def print_table(figures: dict[str, Any]) -> None:
    """The markdown table, the quality lines, and the JSON line."""
    print("\n| phase | seconds |\n|---|---|")
    for phase, value in figures["seconds"].items():
        print(f"| {phase} | {value:.1f} |")
    print(f"| **train both models** | **{figures['train_seconds_total']:.1f}** |")
    print(f"\nclassifier validation accuracy: {figures['classifier_val_accuracy']:.2%}")
    for name, rate in figures["class_match_rate"].items():
        per_class = " ".join(
            f"{label}:{share:.0%}"
            for label, share in figures["class_match_per_class"][name].items()
        )
        print(
            f"{name} ({figures['num_inference_steps']} steps, guidance "
            f"{figures['guidance_scale']}): {rate:.2%} of {figures['generated_per_scheduler']} "
            f"classified as requested; per class {per_class}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
