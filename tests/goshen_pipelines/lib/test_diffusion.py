"""Training the class-conditional denoiser: shapes, callbacks, repeatability, refusals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from goshen.runtimes.diffusion import sample_images
from goshen_pipelines.lib.diffusion import DiffusionConfig, TrainedDiffusion, train_diffusion

Digits = tuple[np.ndarray, np.ndarray]


def _train(digits: Digits, config: DiffusionConfig, **changes: object) -> TrainedDiffusion:
    images, labels = digits
    return train_diffusion(images[:64], labels[:64], 10, dataclasses.replace(config, **changes))


def test_trained_model_is_in_eval_mode_with_a_json_spec(tiny_diffusion: TrainedDiffusion) -> None:
    assert not tiny_diffusion.unet.training
    spec = tiny_diffusion.spec
    assert (spec.image_size, spec.num_classes, spec.null_class) == (8, 10, 10)
    assert spec.scheduler_config["num_train_timesteps"] == 100
    json.dumps(spec.to_dict())


def test_trained_model_samples_every_digit(tiny_diffusion: TrainedDiffusion) -> None:
    images = sample_images(tiny_diffusion.denoiser(), tiny_diffusion.spec, list(range(10)))
    assert images.shape == (10, 8, 8)


def test_on_epoch_end_gets_each_epoch_and_its_metrics(
    digits: Digits, tiny_config: DiffusionConfig
) -> None:
    images, labels = digits
    seen: list[tuple[int, dict[str, float]]] = []
    config = dataclasses.replace(tiny_config, epochs=2)
    trained = train_diffusion(
        images[:64], labels[:64], 10, config, on_epoch_end=lambda *a: seen.append(a)
    )
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert {"loss", "learning_rate", "epoch_seconds"} <= set(seen[0][1])
    assert trained.history == [metrics for _, metrics in seen]


def test_an_exception_in_on_epoch_end_stops_training(
    digits: Digits, tiny_config: DiffusionConfig
) -> None:
    images, labels = digits

    def cancel(epoch: int, metrics: dict[str, float]) -> None:
        raise KeyError("canceled by the user")

    config = dataclasses.replace(tiny_config, epochs=3)
    with pytest.raises(KeyError, match="canceled by the user"):
        train_diffusion(images[:64], labels[:64], 10, config, on_epoch_end=cancel)


def test_same_seed_same_weights(digits: Digits, tiny_config: DiffusionConfig) -> None:
    first, again, other = (
        _train(digits, tiny_config),
        _train(digits, tiny_config),
        _train(digits, tiny_config, seed=1),
    )
    first_state, other_state = first.unet.state_dict(), other.unet.state_dict()
    for name, tensor in again.unet.state_dict().items():
        assert torch.equal(tensor, first_state[name]), name
    assert any(not torch.equal(t, other_state[n]) for n, t in first_state.items())


def test_larger_image_size_resizes_the_training_images(
    digits: Digits, tiny_config: DiffusionConfig
) -> None:
    trained = _train(digits, tiny_config, image_size=16)
    assert trained.unet.config.sample_size == 16
    assert sample_images(trained.denoiser(), trained.spec, [3]).shape == (1, 16, 16)


def test_without_class_dropout_there_is_no_guidance(
    digits: Digits, tiny_config: DiffusionConfig
) -> None:
    spec = _train(digits, tiny_config, class_dropout=0.0, ema_decay=0.0).spec
    assert (spec.null_class, spec.guidance_scale) == (None, 1.0)


def test_image_size_must_suit_the_unet_depth(digits: Digits, tiny_config: DiffusionConfig) -> None:
    with pytest.raises(ValueError, match="image_size 6 must be divisible by 4"):
        _train(digits, tiny_config, image_size=6, block_out_channels=(8, 8, 16))


def test_labels_outside_num_classes_are_refused() -> None:
    images = np.zeros((4, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        train_diffusion(images, np.array([0, 1, 2, 0]), 2, DiffusionConfig(epochs=1))


def test_class_names_go_into_the_spec(digits: Digits, tiny_config: DiffusionConfig) -> None:
    images, labels = digits
    names = [f"digit {digit}" for digit in range(10)]
    trained = train_diffusion(images[:64], labels[:64], 10, tiny_config, class_names=names)
    assert trained.spec.class_names == names
    assert json.loads(json.dumps(trained.spec.to_dict()))["class_names"] == names
    with pytest.raises(ValueError, match="2 class names for 10 classes"):
        train_diffusion(images[:64], labels[:64], 10, tiny_config, class_names=["a", "b"])
