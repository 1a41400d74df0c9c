"""Denoising steps: diffusers' DDPM and DDIM updates, with their coefficients computed once.

A diffusers `step` call recomputes its scalars, looks its timestep up by `nonzero` and builds an
output dataclass on every call: about 0.17 ms on CPU, a tenth of a step of the digits model in
ONNX Runtime, plus 1.2 ms per request to build the scheduler. For the settings Goshen trains
(noise prediction, clipped x0, DDPM's fixed_small variance, DDIM with eta 0), `sampling_steps`
computes each step's coefficients once per (scheduler, config, steps) with diffusers' own
expressions and applies the same float32 operations in the same order, so samples are bit for
bit those of `scheduler.step`. Any other setting runs through a fresh diffusers scheduler.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

# diffusers' own modules: its top-level names resolve to typeless placeholders for type checkers.
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

Scheduler = DDPMScheduler | DDIMScheduler
SCHEDULERS: dict[str, type[Scheduler]] = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
# Fused coefficient tables kept: a worker serves a few models at a few step counts.
CACHED_SETTINGS = 32


class SamplingSteps(Protocol):
    """A sampler's timesteps, and its update of the sample from one timestep to the next."""

    # Fused steps hold ints; a diffusers scheduler's are a tensor of them.
    @property
    def timesteps(self) -> Sequence[int] | torch.Tensor: ...

    def step(
        self,
        index: int,
        noise: torch.Tensor,
        sample: torch.Tensor,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """The sample at the next timestep, given the predicted noise at `timesteps[index]`."""
        ...


def make_scheduler(name: str, config: dict[str, Any]) -> Scheduler:
    """A fresh scheduler of the named kind ("ddpm" or "ddim") from a trained model's config."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    scheduler = SCHEDULERS[name].from_config(config)
    assert not isinstance(scheduler, tuple)  # only with return_unused_kwargs
    return scheduler


def sampling_steps(name: str, config: dict[str, Any], total: int) -> SamplingSteps:
    """The steps of `total`-step sampling with the named scheduler; fused where that is exact."""
    try:
        key = json.dumps(config, sort_keys=True)
    except TypeError:  # a config built in-process with non-JSON values: nothing to cache it by
        key = None
    fused = _fused_steps(name, key, total) if key is not None else None
    if fused is not None:
        return fused
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(total)
    return SchedulerSteps(scheduler)


class SchedulerSteps:
    """Steps run by a diffusers scheduler itself (settings the fused form does not cover)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps

    def step(
        self,
        index: int,
        noise: torch.Tensor,
        sample: torch.Tensor,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        timestep = self.timesteps[index]
        output = self.scheduler.step(noise, timestep, sample, generator=generators)  # type: ignore[arg-type]  # diffusers types an int timestep and one generator, takes tensors and lists
        assert not isinstance(output, tuple)  # return_dict defaults to True
        return output.prev_sample


@dataclass(frozen=True)
class StepCoefficients:
    """One step's scalars, as 0-d float32 tensors exactly as diffusers computes them."""

    noise_scale: torch.Tensor  # sqrt(1 - alpha_prod_t), on the noise in x0's estimate
    sample_scale: torch.Tensor  # sqrt(alpha_prod_t), dividing it
    original_coeff: torch.Tensor  # on the clipped x0 estimate
    other_coeff: torch.Tensor  # on the sample (DDPM) or on the predicted noise (DDIM)
    noise_std: torch.Tensor | None  # DDPM's ancestral noise; None when the step adds none


@dataclass(frozen=True)
class FusedSteps:
    """Precomputed DDPM or DDIM steps: x0 = clip((x - b eps) / a); x' = c0 x0 + c1 (x or eps)."""

    timesteps: tuple[int, ...]
    coefficients: tuple[StepCoefficients, ...]
    clip_range: float | None
    other_is_noise: bool  # DDIM's direction term multiplies the noise, DDPM's the sample

    def step(
        self,
        index: int,
        noise: torch.Tensor,
        sample: torch.Tensor,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        c = self.coefficients[index]
        original = (sample - c.noise_scale * noise) / c.sample_scale
        if self.clip_range is not None:
            original = original.clamp(-self.clip_range, self.clip_range)
        other = noise if self.other_is_noise else sample
        result = c.original_coeff * original + c.other_coeff * other
        if c.noise_std is None:
            return result
        return result + c.noise_std * _row_noise(generators, noise)


def _row_noise(generators: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Noise like diffusers' `randn_tensor` draws it: one row per CPU generator, then moved."""
    shape = (1, *like.shape[1:])
    rows = [torch.randn(shape, generator=g, dtype=like.dtype) for g in generators]
    return torch.cat(rows).to(like.device)


@functools.lru_cache(maxsize=CACHED_SETTINGS)
def _fused_steps(name: str, config_json: str, total: int) -> FusedSteps | None:
    """The fused steps for a setting (cached: they never change), or None outside the fused form."""
    scheduler = make_scheduler(name, json.loads(config_json))
    scheduler.set_timesteps(total)
    config = scheduler.config
    if config["prediction_type"] != "epsilon" or config["thresholding"]:
        return None
    if isinstance(scheduler, DDPMScheduler) and config["variance_type"] == "fixed_small":
        coefficients = [_ddpm_coefficients(scheduler, t) for t in scheduler.timesteps]
        other_is_noise = False
    elif isinstance(scheduler, DDIMScheduler):
        coefficients = [_ddim_coefficients(scheduler, t, total) for t in scheduler.timesteps]
        other_is_noise = True
    else:
        return None
    return FusedSteps(
        timesteps=tuple(scheduler.timesteps.tolist()),
        coefficients=tuple(coefficients),
        clip_range=config["clip_sample_range"] if config["clip_sample"] else None,
        other_is_noise=other_is_noise,
    )


def _ddpm_coefficients(scheduler: DDPMScheduler, t: torch.Tensor) -> StepCoefficients:
    """DDPMScheduler.step's scalars at timestep `t`, written as diffusers writes them."""
    prev_t = scheduler.previous_timestep(t)  # type: ignore[arg-type]  # typed int, but diffusers passes its tensor timesteps too
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_t_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.one
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    # _get_variance's fixed_small variance, clamped as diffusers does before its square root.
    variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
    variance = torch.clamp(variance, min=1e-20)
    return StepCoefficients(
        noise_scale=beta_prod_t ** (0.5),
        sample_scale=alpha_prod_t ** (0.5),
        original_coeff=(alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t,
        other_coeff=current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t,
        noise_std=variance**0.5 if t > 0 else None,
    )


def _ddim_coefficients(scheduler: DDIMScheduler, t: torch.Tensor, total: int) -> StepCoefficients:
    """DDIMScheduler.step's scalars at timestep `t` of `total`-step sampling with eta 0
    (deterministic, no noise term)."""
    prev_t = t - scheduler.config["num_train_timesteps"] // total
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_t_prev = (
        scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    )
    beta_prod_t = 1 - alpha_prod_t
    return StepCoefficients(
        noise_scale=beta_prod_t ** (0.5),
        sample_scale=alpha_prod_t ** (0.5),
        original_coeff=alpha_prod_t_prev ** (0.5),
        # diffusers subtracts std_dev_t ** 2, which is exactly 0 at eta 0.
        other_coeff=(1 - alpha_prod_t_prev) ** (0.5),
        noise_std=None,
    )
