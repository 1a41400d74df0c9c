"""Tiny trained models on a slice of the digits, shared by the lib tests."""

from __future__ import annotations

import numpy as np
import pytest

from goshen_pipelines.lib.classifier import ClassifierConfig, TrainedTabularModel, train_classifier
from goshen_pipelines.lib.diffusion import DiffusionConfig, TrainedDiffusion, train_diffusion
from goshen_pipelines.lib.digits import classifier_features, load_digit_images

TINY_DIFFUSION = DiffusionConfig(
    epochs=1,
    batch_size=64,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    num_train_timesteps=100,
    warmup_steps=1,
    num_inference_steps=4,
)


@pytest.fixture(scope="session")
def tiny_config() -> DiffusionConfig:
    """A denoiser config that trains on a slice of the digits in about a second."""
    return TINY_DIFFUSION


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digit_images()


@pytest.fixture(scope="session")
def tiny_diffusion(digits: tuple[np.ndarray, np.ndarray]) -> TrainedDiffusion:
    images, labels = digits
    return train_diffusion(images[:128], labels[:128], 10, TINY_DIFFUSION)


@pytest.fixture(scope="session")
def digits_classifier(digits: tuple[np.ndarray, np.ndarray]) -> TrainedTabularModel:
    images, labels = digits
    config = ClassifierConfig(epochs=5, hidden_sizes=(32,), input_noise=0.1)
    return train_classifier(classifier_features(images), labels, config)
