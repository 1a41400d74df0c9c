"""The platform's class-conditional generator: requests by digit, by class name or by index
reach the denoiser as the right class labels; the spec carries the class names."""

from __future__ import annotations

import json
from collections.abc import Set as AbstractSet

import pytest
import torch
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from goshen.runtimes.diffusion import DiffusionModelSpec, TorchDenoiser
from goshen.runtimes.generators import ClassConditionalGenerator
from goshen.runtimes.inputs import DigitsInput, LabeledImagesInput, TextToImageInput

CLASSES = ["zero", "one", "two"]


class RecordingUNet(torch.nn.Module):
    """A denoiser-shaped module with random weights that records the class labels it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.labels: list[list[int]] = []

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor, **_: object
    ) -> tuple[torch.Tensor]:
        self.labels.append(class_labels.tolist())
        return (self.conv(sample),)


def _spec(class_names: list[str] | None) -> DiffusionModelSpec:
    config = dict(DDPMScheduler(num_train_timesteps=100, timestep_spacing="trailing").config)
    return DiffusionModelSpec(
        image_size=8,
        num_classes=3,
        scheduler_config={key: value for key, value in config.items() if not key.startswith("_")},
        num_inference_steps=2,
        class_names=class_names,
    )


def never_stop(step: int, total: int) -> AbstractSet[int]:
    return frozenset()


@pytest.fixture
def unet() -> RecordingUNet:
    torch.manual_seed(0)
    return RecordingUNet()


def test_labels_by_name_and_index_reach_the_denoiser_as_class_indices(
    unet: RecordingUNet,
) -> None:
    generator = ClassConditionalGenerator(TorchDenoiser(unet), _spec(CLASSES))
    results = generator.generate(
        [
            LabeledImagesInput(label="two", num_images=2, seed=1),
            LabeledImagesInput(label=1, seed=2),
            LabeledImagesInput(label="zero", seed=3),
        ],
        never_stop,
    )
    assert unet.labels[0] == [2, 2, 1, 0]
    assert [len(images) for images in results if images is not None] == [2, 1, 1]
    assert results[0] is not None and results[0][0].size == (8, 8)


def test_a_name_the_spec_does_not_know_is_a_value_error_naming_it(unet: RecordingUNet) -> None:
    generator = ClassConditionalGenerator(TorchDenoiser(unet), _spec(CLASSES))
    with pytest.raises(ValueError, match=r"'five'.*\['zero', 'one', 'two'\]"):
        generator.generate([LabeledImagesInput(label="five", seed=1)], never_stop)
    unnamed = ClassConditionalGenerator(TorchDenoiser(unet), _spec(None))
    with pytest.raises(ValueError, match=r"'one'.*no class names"):
        unnamed.generate([LabeledImagesInput(label="one", seed=1)], never_stop)
    assert unet.labels == []


def test_digits_inputs_still_run_by_digit(unet: RecordingUNet) -> None:
    generator = ClassConditionalGenerator(TorchDenoiser(unet), _spec(None))
    generator.generate([DigitsInput(digit=2, seed=1), DigitsInput(digit=0, seed=1)], never_stop)
    assert unet.labels[0] == [2, 0]


def test_other_inputs_are_refused(unet: RecordingUNet) -> None:
    generator = ClassConditionalGenerator(TorchDenoiser(unet), _spec(CLASSES))
    with pytest.raises(TypeError, match="TextToImageInput"):
        generator.generate([TextToImageInput(prompt="a cat", seed=1)], never_stop)


@pytest.mark.parametrize("class_names", [CLASSES, None])
def test_a_spec_round_trips_with_and_without_class_names(class_names: list[str] | None) -> None:
    spec = _spec(class_names)
    assert DiffusionModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_spec_written_before_class_names_reads_without_them() -> None:
    old = _spec(None).to_dict()
    del old["class_names"]
    assert DiffusionModelSpec.from_dict(old).class_names is None


def test_a_spec_names_every_class_or_none() -> None:
    with pytest.raises(ValueError, match="3 classes names 2"):
        _spec(["zero", "one"])
