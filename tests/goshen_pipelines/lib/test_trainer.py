"""What every training run leaves behind: nothing in the working directory, threads as found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from goshen_pipelines.lib.classifier import ClassifierConfig, train_classifier
from goshen_pipelines.lib.trainer import training_threads


def test_training_writes_nothing_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    features = np.random.default_rng(0).normal(size=(40, 3))
    train_classifier(features, features[:, 0] > 0, ClassifierConfig(epochs=1))
    assert list(tmp_path.iterdir()) == []


def test_training_restores_the_thread_setting() -> None:
    original = torch.get_num_threads()
    # A setting training would not choose itself, so a leak shows.
    torch.set_num_threads(training_threads() + 1)
    try:
        features = np.random.default_rng(0).normal(size=(40, 3))
        train_classifier(features, features[:, 0] > 0, ClassifierConfig(epochs=1))
        assert torch.get_num_threads() == training_threads() + 1
    finally:
        torch.set_num_threads(original)
