"""Train both built-in digits models with default configs, time each phase, measure quality.

    python bench/train_digits.py [--per-class 50] [--diffusion epochs=40 --diffusion guidance_scale=3]

Prints a table for BENCHMARKS.md and, last, one JSON line with every figure.
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

import torch

from goshen.runtimes.diffusion import OnnxDenoiser
from goshen_pipelines.lib import export
from goshen_pipelines.lib.classifier import ClassifierConfig, train_classifier
from goshen_pipelines.lib.diffusion import DiffusionConfig, train_diffusion
from goshen_pipelines.lib.digits import NUM_DIGIT_CLASSES, classifier_features, load_digit_images
from goshen_pipelines.lib.quality import ClassMatch, class_match_rate


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


def progress(model: str) -> Callable[[int, dict[str, float]], None]:
    """An on_epoch_end callback that prints one line per epoch."""

    def report(epoch: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{key}={value:.4g}" for key, value in metrics.items())
        print(f"    {model} epoch {epoch}: {shown}", flush=True)

    return report


def main() -> None:
    """Run the benchmark and print its table and JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50, help="images generated per digit")
    parser.add_argument("--diffusion", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args()
    diffusion_config = config_with(DiffusionConfig(), args.diffusion)
    classifier_config = ClassifierConfig()
    seconds: dict[str, float] = {}
    images, labels = load_digit_images()
    features = classifier_features(images)

    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}", flush=True)
    with timed(seconds, "train_classifier"):
        classifier = train_classifier(
            features, labels, classifier_config, None if args.quiet else progress("classifier")
        )
    with timed(seconds, "train_diffusion"):
        diffusion = train_diffusion(
            images,
            labels,
            NUM_DIGIT_CLASSES,
            diffusion_config,
            None if args.quiet else progress("diffusion"),
        )
    with tempfile.TemporaryDirectory() as folder, timed(seconds, "export_and_parity"):
        unet_path = export.export_denoiser(diffusion.unet, Path(folder, "unet.onnx"), 10)
        classifier_path = export.export_tabular_model(
            classifier, Path(folder, "classifier.onnx"), features
        )
        parity = {
            "denoiser": export.parity(
                export.DenoiserForExport(diffusion.unet),
                unet_path,
                export.denoiser_inputs(diffusion.spec.image_size, NUM_DIGIT_CLASSES),
            ),
            "classifier": export.parity(
                classifier.export_module(), classifier_path, export.tabular_inputs(features)
            ),
        }
        with timed(seconds, "quality_onnx"):
            quality = class_match_rate(
                OnnxDenoiser.from_path(unet_path),
                diffusion.spec,
                classifier.predict,
                args.per_class,
            )
    report(diffusion_config, classifier_config, seconds, classifier.metrics, parity, quality)


def report(
    diffusion_config: DiffusionConfig,
    classifier_config: ClassifierConfig,
    seconds: dict[str, float],
    classifier_metrics: dict[str, float],
    parity: dict[str, float],
    quality: ClassMatch,
) -> None:
    """Print the markdown table and the JSON line."""
    figures = {
        "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}",
        "seconds": seconds,
        "train_seconds_total": round(seconds["train_classifier"] + seconds["train_diffusion"], 2),
        "classifier_val_accuracy": round(classifier_metrics["val_accuracy"], 4),
        "class_match_rate": round(quality.rate, 4),
        "class_match_per_class": {k: round(v, 3) for k, v in quality.per_class.items()},
        "generated": len(quality.requested),
        "parity_max_abs_diff": parity,
        "diffusion_config": dataclasses.asdict(diffusion_config),
        "classifier_config": dataclasses.asdict(classifier_config),
    }
    print("\n| phase | seconds |\n|---|---|")
    for phase, value in seconds.items():
        print(f"| {phase} | {value:.1f} |")
    print(f"| **train both** | **{figures['train_seconds_total']:.1f}** |")
    print(f"\nclassifier validation accuracy: {figures['classifier_val_accuracy']:.2%}")
    print(
        f"generated digits classified as requested: {quality.rate:.2%} of {len(quality.requested)}"
    )
    print("per class:", " ".join(f"{k}:{v:.0%}" for k, v in quality.per_class.items()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
