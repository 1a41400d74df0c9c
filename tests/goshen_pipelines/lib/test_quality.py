"""The generator quality metric: share of generated digits classified as requested."""

from __future__ import annotations

import numpy as np

from goshen_pipelines.lib.diffusion import TrainedDiffusion
from goshen_pipelines.lib.quality import class_match_rate


def test_perfect_classifier_scores_one_and_sees_8x8_unit_pixels(
    tiny_diffusion: TrainedDiffusion,
) -> None:
    seen: list[np.ndarray] = []
    order = np.tile(np.arange(10), 2)

    def echo_requested(features: np.ndarray) -> np.ndarray:
        seen.append(features)
        return order[: len(features)]

    result = class_match_rate(tiny_diffusion.denoiser(), tiny_diffusion.spec, echo_requested, 2)
    assert result.rate == 1.0
    assert result.per_class == dict.fromkeys(range(10), 1.0)
    assert result.images.shape == (20, 8, 8)
    np.testing.assert_array_equal(result.requested, order)
    (features,) = seen
    assert features.shape == (20, 64)
    assert features.min() >= 0.0 and features.max() <= 1.0


def test_classifier_that_always_says_zero_matches_one_class_in_ten(
    tiny_diffusion: TrainedDiffusion,
) -> None:
    result = class_match_rate(
        tiny_diffusion.denoiser(),
        tiny_diffusion.spec,
        lambda features: np.zeros(len(features), dtype=int),
        per_class=3,
        batch_size=7,
    )
    assert result.rate == 0.1
    assert result.per_class[0] == 1.0
    assert result.per_class[9] == 0.0
    assert len(result.images) == 30


def test_untrained_generator_scores_low_with_a_real_classifier(
    tiny_diffusion: TrainedDiffusion, digits_classifier
) -> None:
    result = class_match_rate(
        tiny_diffusion.denoiser(), tiny_diffusion.spec, digits_classifier.predict, per_class=5
    )
    assert result.rate < 0.5
