"""Training an MLP classifier or regressor over a feature matrix with Lightning."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from goshen_pipelines.lib.trainer import TensorLoader, fit

Task = Literal["classification", "regression"]
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class ClassifierConfig:
    """How to train a tabular model; the defaults suit small tables (digits: see below)."""

    task: Task = "classification"
    hidden_sizes: tuple[int, ...] = (128, 64)
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    validation_fraction: float = 0.2
    # Std of Gaussian noise added to raw features while training, in feature units. It keeps a
    # nearly constant feature (a digit's blank corner) from turning a small deviation into a
    # large input, and so makes the model robust to noise of that size.
    input_noise: float = 0.0
    seed: int = 0


# The built-in digits classifier. Its pixels share one [0, 1] scale; noise of a tenth of it makes
# the classifier judge generated digits by their shape rather than by stray faint pixels.
DIGITS_CLASSIFIER_CONFIG = ClassifierConfig(epochs=50, input_noise=0.1)


class TabularNet(nn.Module):
    """An MLP on raw features: feature (and regression target) standardization is built in."""

    # Buffers, registered in __init__.
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(
        self,
        hidden_sizes: tuple[int, ...],
        dropout: float,
        feature_mean: torch.Tensor,
        feature_std: torch.Tensor,
        num_outputs: int,
        target_scale: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.regression = target_scale is not None
        mean, std = target_scale or (0.0, 1.0)
        self.register_buffer("feature_mean", feature_mean)
        self.register_buffer("feature_std", feature_std)
        self.register_buffer("target_mean", torch.tensor(mean))
        self.register_buffer("target_std", torch.tensor(std))
        layers: list[nn.Module] = []
        width = len(feature_mean)
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits [B, C] (classification) or predictions [B] in target units (regression)."""
        out: torch.Tensor = self.mlp((features - self.feature_mean) / self.feature_std)
        if self.regression:
            return out[:, 0] * self.target_std + self.target_mean
        return out


class ProbabilityHead(nn.Module):
    """Wraps a classifier so its output is class probabilities, the form the ONNX export serves."""

    def __init__(self, net: TabularNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(features)
        return torch.softmax(logits, dim=1)


class ColumnStack(nn.Module):
    """Wraps a model on the feature matrix so it takes one [B] tensor per feature column, of
    any numeric dtype, cast to float32 and stacked in training order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *columns: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(
            torch.stack([column.to(torch.float32) for column in columns], dim=1)
        )
        return out


@dataclass
class TrainedTabularModel:
    """An eval-mode TabularNet, its validation metrics and per-epoch history."""

    net: TabularNet
    task: Task
    num_features: int
    # Target values by output index (classification); empty for regression.
    classes: list[Any]
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)

    def export_module(self, per_column: bool = False) -> nn.Module:
        """Raw features [B, F] -> probabilities [B, C] (classification) or predictions [B];
        `per_column`: F tensors [B], one per feature column in training order, instead."""
        module = ProbabilityHead(self.net) if self.task == "classification" else self.net
        return ColumnStack(module) if per_column else module

    @torch.inference_mode()
    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted class values (classification) or target values (regression)."""
        out: torch.Tensor = self.net(torch.from_numpy(np.asarray(features, dtype=np.float32)))
        if self.task == "regression":
            return out.numpy()
        predicted: np.ndarray = np.asarray(self.classes)[out.argmax(dim=1).numpy()]
        return predicted


class TabularModule(L.LightningModule):
    """Cross-entropy or standardized-MSE training with validation metrics at each epoch's end."""

    def __init__(
        self,
        net: TabularNet,
        config: ClassifierConfig,
        validation: tuple[torch.Tensor, torch.Tensor],
        total_steps: int,
        on_epoch_end: EpochCallback | None,
    ) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.validation = validation
        self.total_steps = total_steps
        self.on_epoch_end = on_epoch_end
        self.history: list[dict[str, float]] = []
        self._losses: list[torch.Tensor] = []
        self._epoch_started = 0.0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        features, targets = batch
        if self.config.input_noise:
            features = features + self.config.input_noise * torch.randn_like(features)
        loss = self._loss(self.net(features), targets)
        self._losses.append(loss.detach())
        return loss

    def _loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.config.task == "classification":
            return F.cross_entropy(out, targets)
        return ((out - targets) / self.net.target_std).pow(2).mean()

    def on_train_epoch_start(self) -> None:
        self._losses.clear()
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        metrics = {"loss": torch.stack(self._losses).mean().item(), **self.evaluate()}
        metrics["epoch_seconds"] = time.perf_counter() - self._epoch_started
        self.history.append(metrics)
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.current_epoch + 1, metrics)

    def evaluate(self) -> dict[str, float]:
        """Loss and the task's metrics on the held-out split."""
        features, targets = (tensor.to(self.device) for tensor in self.validation)
        self.net.eval()
        with torch.no_grad():
            out = self.net(features)
        self.net.train()
        metrics = {"val_loss": self._loss(out, targets).item()}
        if self.config.task == "classification":
            metrics["val_accuracy"] = (out.argmax(dim=1) == targets).float().mean().item()
        else:
            mse = F.mse_loss(out, targets).item()
            variance = targets.var(unbiased=False).item()
            metrics["val_rmse"] = math.sqrt(mse)
            metrics["val_r2"] = 1 - mse / variance if variance > 0 else 0.0
        return metrics

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.config.learning_rate, total_steps=self.total_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def train_classifier(
    features: np.ndarray,
    targets: np.ndarray,
    config: ClassifierConfig | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainedTabularModel:
    """Train on raw features (N, F) and targets (N,), holding out a seeded validation split.

    `on_epoch_end(epoch, metrics)` runs after each epoch (epochs count from 1); an exception
    it raises stops training and propagates, which is how a caller cancels.
    """
    config = config or ClassifierConfig()
    features = _checked_features(features, targets)
    classes, encoded = _encode_targets(targets, config.task)
    train_rows, validation_rows = _split(len(features), config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    net = _build_net(features[train_rows], encoded[train_rows], len(classes), config)
    loader = _loader(features[train_rows], encoded[train_rows], config)
    validation = (torch.from_numpy(features[validation_rows]), encoded[validation_rows])
    module = TabularModule(net, config, validation, config.epochs * len(loader), on_epoch_end)
    fit(module, loader, config.epochs)
    net = module.net.cpu().eval()
    metrics = {key: value for key, value in module.history[-1].items() if key.startswith("val_")}
    return TrainedTabularModel(
        net, config.task, features.shape[1], classes, metrics, history=module.history
    )


def _checked_features(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(targets):
        raise ValueError(
            f"expected features (N, F) and targets (N,), got {features.shape} and {targets.shape}"
        )
    if len(features) < 2:
        raise ValueError("need at least 2 rows: one to train on and one to validate on")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values; fill or drop them first")
    return features


def _encode_targets(targets: np.ndarray, task: Task) -> tuple[list[Any], torch.Tensor]:
    """Class values by index and each row's class index, or float targets for regression."""
    if task == "regression":
        return [], torch.from_numpy(np.asarray(targets, dtype=np.float32))
    classes, encoded = np.unique(targets, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("the target column has a single class; a classifier needs at least 2")
    return classes.tolist(), torch.from_numpy(encoded.astype(np.int64))


def _split(rows: int, config: ClassifierConfig) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(config.seed).permutation(rows)
    held_out = min(rows - 1, max(1, round(rows * config.validation_fraction)))
    return order[held_out:], order[:held_out]


def _build_net(
    features: np.ndarray, targets: torch.Tensor, num_classes: int, config: ClassifierConfig
) -> TabularNet:
    mean = torch.from_numpy(features.mean(axis=0))
    # The scale the network sees includes the training noise.
    std = torch.from_numpy(np.sqrt(features.var(axis=0) + config.input_noise**2))
    # Constant columns (the digits' blank corners) pass through unscaled instead of dividing by 0.
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    if config.task == "classification":
        return TabularNet(config.hidden_sizes, config.dropout, mean, std, num_classes)
    scale = (targets.mean().item(), max(targets.std(unbiased=False).item(), 1e-6))
    return TabularNet(config.hidden_sizes, config.dropout, mean, std, 1, scale)


def _loader(features: np.ndarray, targets: torch.Tensor, config: ClassifierConfig) -> TensorLoader:
    dataset = TensorDataset(torch.from_numpy(features), targets)
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
