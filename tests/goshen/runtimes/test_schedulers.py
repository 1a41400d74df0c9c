"""Fused denoising steps give exactly the samples diffusers' own `step` gives."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import DDPMScheduler

from goshen.runtimes.schedulers import (
    FusedSteps,
    SchedulerSteps,
    make_scheduler,
    sampling_steps,
)

TRAINED = {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}


def scheduler_config(**changes: Any) -> dict[str, Any]:
    config = dict(DDPMScheduler(num_train_timesteps=1000, **changes).config)
    return {key: value for key, value in config.items() if not key.startswith("_")}


def run_both(
    name: str, config: dict[str, Any], total: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every step's sample from `sampling_steps` and from a diffusers scheduler, same inputs."""
    steps = sampling_steps(name, config, total)
    reference = make_scheduler(name, config)
    reference.set_timesteps(total)
    torch.manual_seed(0)
    sample = torch.randn(3, 1, 8, 8) * 3  # wide enough that x0 clipping matters
    ours, theirs = [], []
    for index, timestep in enumerate(reference.timesteps):
        noise = torch.randn(3, 1, 8, 8)
        gens_ours = [torch.Generator().manual_seed(index * 10 + row) for row in range(3)]
        gens_ref = [torch.Generator().manual_seed(index * 10 + row) for row in range(3)]
        ours.append(steps.step(index, noise, sample, gens_ours))
        theirs.append(reference.step(noise, timestep, sample, generator=gens_ref).prev_sample)
        assert int(steps.timesteps[index]) == int(timestep)
    return ours, theirs


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
@pytest.mark.parametrize(
    "changes",
    [TRAINED, {}, {**TRAINED, "clip_sample": False}, {"timestep_spacing": "leading"}],
)
@pytest.mark.parametrize("total", [25, 7])
def test_fused_steps_match_diffusers_bit_for_bit(
    name: str, changes: dict[str, Any], total: int
) -> None:
    config = scheduler_config(**changes)
    assert isinstance(sampling_steps(name, config, total), FusedSteps)
    ours, theirs = run_both(name, config, total)
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(mine, reference), f"step {step} differs"


@pytest.mark.parametrize(
    ("name", "changes"),
    [("ddpm", {"prediction_type": "v_prediction"}), ("ddpm", {"variance_type": "fixed_large"})],
)
def test_other_settings_run_on_the_diffusers_scheduler(name: str, changes: dict) -> None:
    config = scheduler_config(**TRAINED, **changes)
    assert isinstance(sampling_steps(name, config, 5), SchedulerSteps)
    ours, theirs = run_both(name, config, 5)
    assert all(torch.equal(mine, reference) for mine, reference in zip(ours, theirs, strict=True))


def test_too_many_steps_is_refused_as_diffusers_refuses_it() -> None:
    with pytest.raises(ValueError, match="cannot be larger"):
        sampling_steps("ddpm", scheduler_config(), 1001)
