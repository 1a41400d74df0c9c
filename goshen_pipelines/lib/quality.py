"""A generator metric a person can trust: does a classifier see the digit that was asked for?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from goshen.runtimes.diffusion import Denoiser, DiffusionModelSpec, sample_images
from goshen_pipelines.lib.digits import classifier_features, uint8_to_unit

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ClassMatch:
    """Share of generated images classified as their requested class, overall and per class."""

    rate: float
    per_class: dict[int, float]
    # The generated images (N, H, W) uint8 and the class each was asked for, for sample grids.
    images: np.ndarray
    requested: np.ndarray


def class_match_rate(
    denoiser: Denoiser,
    spec: DiffusionModelSpec,
    predict: Predict,
    per_class: int = 50,
    *,
    seed: int = 0,
    scheduler: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 250,
) -> ClassMatch:
    """Generate `per_class` images of every class and classify them with `predict`.

    `predict` takes classifier features (N, 64): 8x8 pixels in [0, 1], as the digits classifier
    is trained on, and returns predicted class labels (N,).
    """
    # Class-interleaved order, so a grid with num_classes columns shows one class per column.
    requested = np.tile(np.arange(spec.num_classes), per_class)
    batches = []
    for number, start in enumerate(range(0, len(requested), batch_size)):
        batches.append(
            sample_images(
                denoiser,
                spec,
                requested[start : start + batch_size].tolist(),
                seed=seed + number,
                scheduler=scheduler,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
            )
        )
    images = np.concatenate(batches)
    matched = predict(classifier_features(uint8_to_unit(images))) == requested
    per_class_rate = {
        label: float(matched[requested == label].mean()) for label in range(spec.num_classes)
    }
    return ClassMatch(float(matched.mean()), per_class_rate, images, requested)
