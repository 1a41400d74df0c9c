"""The MLP classifier and regressor: accuracy, folded-in scaling, repeatability, refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from goshen_pipelines.lib.classifier import ClassifierConfig, TrainedTabularModel, train_classifier
from goshen_pipelines.lib.digits import classifier_features

SMALL = ClassifierConfig(epochs=5, hidden_sizes=(32,))


def test_digits_classifier_is_far_above_chance(
    digits_classifier: TrainedTabularModel, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    assert digits_classifier.metrics["val_accuracy"] > 0.85
    assert digits_classifier.classes == list(range(10))
    assert (digits_classifier.predict(classifier_features(images)) == labels).mean() > 0.85


def test_input_noise_makes_the_classifier_robust_to_speckle(
    digits_classifier: TrainedTabularModel, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    features = classifier_features(images)
    speckled = np.clip(features + np.random.default_rng(0).normal(0, 0.05, features.shape), 0, 1)
    plain = train_classifier(features, labels, SMALL)
    assert (digits_classifier.predict(speckled) == labels).mean() > 0.85
    assert (plain.predict(speckled) == labels).mean() < 0.8


def test_exported_classifier_module_gives_probabilities(
    digits_classifier: TrainedTabularModel, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    features = torch.from_numpy(classifier_features(digits[0][:4]))
    with torch.inference_mode():
        probabilities = digits_classifier.export_module()(features)
    assert probabilities.shape == (4, 10)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(4))


def test_scaling_is_inside_the_model() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 3))
    labels = np.where(features[:, 0] + features[:, 1] > 0, "yes", "no")
    # Raw features far from zero and on very different scales train as well as standardized ones.
    raw = features * [1000.0, 0.001, 1.0] + [5000.0, -3.0, 0.0]
    config = dataclasses.replace(SMALL, epochs=20)
    model = train_classifier(raw, labels, config)
    standardized = train_classifier(features, labels, config)
    assert model.classes == ["no", "yes"]
    assert model.metrics["val_accuracy"] > 0.9
    assert model.metrics["val_accuracy"] == standardized.metrics["val_accuracy"]
    assert (model.predict(raw) == labels).mean() > 0.9


def test_regressor_reports_rmse_and_r2_in_target_units() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(500, 4)).astype(np.float32)
    targets = 300.0 + 50.0 * features[:, 0] - 20.0 * features[:, 2]
    seen: list[int] = []
    model = train_classifier(
        features,
        targets,
        ClassifierConfig(task="regression", epochs=20),
        on_epoch_end=lambda epoch, _: seen.append(epoch),
    )
    assert seen == list(range(1, 21))
    assert model.metrics["val_r2"] > 0.9
    assert model.metrics["val_rmse"] < 0.3 * targets.std()
    assert model.predict(features[:5]).shape == (5,)
    assert abs(model.predict(features).mean() - targets.mean()) < 10


def test_same_seed_same_weights(digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = classifier_features(digits[0][:300]), digits[1][:300]
    first, again = (train_classifier(features, labels, SMALL) for _ in range(2))
    for name, tensor in first.net.state_dict().items():
        assert torch.equal(tensor, again.net.state_dict()[name]), name
    assert first.metrics == again.metrics


def test_on_epoch_end_gets_validation_accuracy(digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = classifier_features(digits[0][:200]), digits[1][:200]
    seen: list[dict[str, float]] = []
    model = train_classifier(features, labels, SMALL, on_epoch_end=lambda _, m: seen.append(m))
    assert len(seen) == SMALL.epochs
    assert {"loss", "val_loss", "val_accuracy", "epoch_seconds"} <= set(seen[-1])
    assert model.metrics == {k: v for k, v in seen[-1].items() if k.startswith("val_")}


@pytest.mark.parametrize(
    ("features", "targets", "message"),
    [
        (np.zeros((3, 2)), np.array([0, 1]), "expected features"),
        (np.zeros((1, 2)), np.array([0]), "at least 2 rows"),
        (np.array([[0.0], [np.nan]]), np.array([0, 1]), "NaN"),
        (np.zeros((4, 2)), np.array([1, 1, 1, 1]), "single class"),
    ],
)
def test_unusable_tables_are_refused(
    features: np.ndarray, targets: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        train_classifier(features, targets, SMALL)
