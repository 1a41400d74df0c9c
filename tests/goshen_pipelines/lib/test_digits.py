"""The bundled digits and the scaling between diffusion images and classifier features."""

from __future__ import annotations

import numpy as np

from goshen_pipelines.lib.digits import (
    classifier_features,
    load_digit_images,
    resize_images,
    uint8_to_unit,
)


def test_digits_are_unit_scaled_8x8_images_with_ten_labels() -> None:
    images, labels = load_digit_images()
    assert images.shape == (1797, 8, 8)
    assert images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.dtype == np.int64
    assert sorted(set(labels.tolist())) == list(range(10))


def test_resize_up_and_back_keeps_the_digit() -> None:
    images, _ = load_digit_images()
    large = resize_images(images[:10], 16)
    back = resize_images(large, 8)
    assert large.shape == (10, 16, 16)
    assert large.min() >= 0.0 and large.max() <= 1.0
    assert np.abs(back - images[:10]).mean() < 0.08


def test_resize_to_the_same_size_is_identity() -> None:
    images, _ = load_digit_images()
    np.testing.assert_array_equal(resize_images(images[:3], 8), images[:3])


def test_classifier_features_are_flat_8x8_pixels() -> None:
    images, _ = load_digit_images()
    np.testing.assert_array_equal(classifier_features(images[:5]), images[:5].reshape(5, 64))
    assert classifier_features(resize_images(images[:5], 16)).shape == (5, 64)


def test_uint8_images_map_to_unit_range() -> None:
    pixels = uint8_to_unit(np.array([[[0, 255]]], dtype=np.uint8))
    np.testing.assert_array_equal(pixels, [[[0.0, 1.0]]])
