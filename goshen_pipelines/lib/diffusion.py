"""Training a class-conditional diffusion model (diffusers UNet2DModel) with Lightning."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch

# diffusers' own modules: its top-level names resolve to typeless placeholders for type checkers.
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, TensorDataset

from goshen.runtimes.diffusion import DiffusionModelSpec, TorchDenoiser
from goshen_pipelines.lib.digits import resize_images
from goshen_pipelines.lib.trainer import TensorLoader, fit

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class DiffusionConfig:
    """How to train a denoiser; the defaults train the built-in digits model in minutes on a CPU."""

    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 2e-3
    image_size: int = 8
    seed: int = 0
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    # Min-SNR loss weighting (Hang et al., 2023); 0 turns it off.
    min_snr_gamma: float = 5.0
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    # Share of labels swapped for the null class, so one model also predicts unconditionally.
    class_dropout: float = 0.1
    guidance_scale: float = 2.0
    ema_decay: float = 0.995
    warmup_steps: int = 50
    # Sampling defaults recorded in the model's spec. Ancestral (DDPM) sampling gives clean
    # backgrounds at 25 steps; deterministic DDIM leaves speckles on a model trained this briefly.
    scheduler: str = "ddpm"
    num_inference_steps: int = 25


@dataclass
class TrainedDiffusion:
    """An eval-mode denoiser (EMA weights when enabled) and what sampling from it needs."""

    unet: UNet2DModel
    spec: DiffusionModelSpec
    history: list[dict[str, float]] = field(default_factory=list)

    def denoiser(self) -> TorchDenoiser:
        """The model as a denoiser for `goshen.runtimes.diffusion.sample_images`."""
        return TorchDenoiser(self.unet)


def build_unet(config: DiffusionConfig, num_class_embeds: int) -> UNet2DModel:
    """A small UNet on one-channel images, conditioned on a class embedding."""
    levels = len(config.block_out_channels)
    if config.image_size % 2 ** (levels - 1):
        raise ValueError(
            f"image_size {config.image_size} must be divisible by {2 ** (levels - 1)} "
            f"for {levels} UNet levels; change image_size or block_out_channels"
        )
    unet: UNet2DModel = UNet2DModel(
        sample_size=config.image_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=config.norm_num_groups,
        num_class_embeds=num_class_embeds,
    )
    return unet


def noise_scheduler_config(config: DiffusionConfig) -> dict[str, object]:
    """The scheduler settings a model is trained with; samplers rebuild DDPM or DDIM from them."""
    scheduler = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        # Trailing spacing makes few-step sampling start at the last timestep, from pure noise.
        timestep_spacing="trailing",
    )
    return {key: value for key, value in scheduler.config.items() if not key.startswith("_")}


class DiffusionModule(L.LightningModule):
    """Noise-prediction training with an exponential moving average of the weights."""

    def __init__(
        self,
        config: DiffusionConfig,
        num_classes: int,
        total_steps: int,
        on_epoch_end: EpochCallback | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.null_class = num_classes if config.class_dropout > 0 else None
        self.unet = build_unet(config, num_classes + (self.null_class is not None))
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False) if config.ema_decay else None
        self.noise_scheduler = DDPMScheduler.from_config(noise_scheduler_config(config))
        self.total_steps = total_steps
        self.on_epoch_end = on_epoch_end
        self.history: list[dict[str, float]] = []
        self._losses: list[torch.Tensor] = []
        self._epoch_started = 0.0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        images, labels = batch
        noise = torch.randn_like(images)
        timesteps = torch.randint(
            0, self.config.num_train_timesteps, (len(images),), device=images.device
        )
        if self.null_class is not None:
            dropped = torch.rand(len(labels), device=labels.device) < self.config.class_dropout
            labels = labels.masked_fill(dropped, self.null_class)
        noisy = self.noise_scheduler.add_noise(images, noise, timesteps)
        predicted: torch.Tensor = self.unet(
            noisy, timesteps, class_labels=labels, return_dict=False
        )[0]
        errors = (predicted - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (errors * self._loss_weights(timesteps)).mean()
        self._losses.append(loss.detach())
        return loss

    def _loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR weights for noise prediction: nearly clean timesteps stop dominating."""
        if not self.config.min_snr_gamma:
            return torch.ones_like(timesteps, dtype=torch.float32)
        alphas_cumprod: torch.Tensor = self.noise_scheduler.alphas_cumprod
        alphas = alphas_cumprod.to(timesteps.device)[timesteps]
        snr = alphas / (1 - alphas)
        return snr.clamp(max=self.config.min_snr_gamma) / snr

    def on_train_batch_end(self, *_: object) -> None:
        if self.ema_unet is None:
            return
        step = self.global_step
        # Warm-up: early averages follow the fast-moving weights instead of the random start.
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, current in zip(
                self.ema_unet.parameters(), self.unet.parameters(), strict=True
            ):
                average.lerp_(current, 1 - decay)

    def on_train_epoch_start(self) -> None:
        self._losses.clear()
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        schedule = self.lr_schedulers()
        assert isinstance(schedule, LRScheduler)  # configure_optimizers returns exactly one
        metrics = {
            "loss": torch.stack(self._losses).mean().item(),
            "learning_rate": float(schedule.get_last_lr()[0]),
            "epoch_seconds": time.perf_counter() - self._epoch_started,
        }
        self.history.append(metrics)
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.current_epoch + 1, metrics)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.config.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to zero at the last step."""
        warmup = self.config.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_diffusion(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: DiffusionConfig | None = None,
    on_epoch_end: EpochCallback | None = None,
    *,
    class_names: list[str] | None = None,
) -> TrainedDiffusion:
    """Train a denoiser on images (N, H, W) in [0, 1] with labels in 0..num_classes-1.

    `on_epoch_end(epoch, metrics)` runs after each epoch (epochs count from 1); an exception
    it raises stops training and propagates, which is how a caller cancels. `class_names`, by
    label, go into the model's spec, where serving maps a requested class name to its label.
    """
    config = config or DiffusionConfig()
    _check_training_data(images, labels, num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
    L.seed_everything(config.seed, workers=True, verbose=False)
    loader = _loader(images, labels, config)
    total_steps = config.epochs * len(loader)
    module = DiffusionModule(config, num_classes, total_steps, on_epoch_end)
    fit(module, loader, config.epochs)
    unet = (module.ema_unet or module.unet).cpu().eval()
    spec = DiffusionModelSpec(
        image_size=config.image_size,
        num_classes=num_classes,
        scheduler_config=noise_scheduler_config(config),
        null_class=module.null_class,
        guidance_scale=config.guidance_scale if module.null_class is not None else 1.0,
        num_inference_steps=config.num_inference_steps,
        scheduler=config.scheduler,
        class_names=class_names,
    )
    return TrainedDiffusion(unet=unet, spec=spec, history=module.history)


def _check_training_data(images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if images.ndim != 3 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            f"expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must be scaled to [0, 1]; divide uint8 pixels by 255")


def _loader(images: np.ndarray, labels: np.ndarray, config: DiffusionConfig) -> TensorLoader:
    pixels = torch.from_numpy(resize_images(images, config.image_size))[:, None] * 2 - 1
    dataset = TensorDataset(pixels, torch.from_numpy(labels.astype(np.int64)))
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
