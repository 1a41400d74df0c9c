"""scikit-learn's bundled handwritten digits, and the image scaling both built-in models share."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

DIGIT_SIZE = 8
NUM_DIGIT_CLASSES = 10
_MAX_PIXEL = 16.0  # the bundled images count ink in 0..16


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 bundled 8x8 digits as float32 images (N, 8, 8) in [0, 1] and int64 labels (N,)."""
    bunch = load_digits()
    images = (bunch.images / _MAX_PIXEL).astype(np.float32)
    return images, bunch.target.astype(np.int64)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize float images (N, H, W) to (N, size, size): bilinear up, area average down."""
    if images.shape[1:] == (size, size):
        return images.astype(np.float32, copy=False)
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    if size < images.shape[1]:
        # Averaging each block keeps thin strokes that point-sampling would skip.
        resized = F.interpolate(batch, size=(size, size), mode="area")
    else:
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
    return resized[:, 0].numpy()


def classifier_features(images: np.ndarray) -> np.ndarray:
    """Images (N, H, W) in [0, 1] as digits-classifier input: 8x8 pixels flattened to (N, 64)."""
    return resize_images(images, DIGIT_SIZE).reshape(len(images), DIGIT_SIZE * DIGIT_SIZE)


def uint8_to_unit(images: np.ndarray) -> np.ndarray:
    """Generated uint8 images in [0, 255] as float32 in [0, 1], the scale the models train on."""
    return images.astype(np.float32) / 255.0
