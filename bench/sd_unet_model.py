"""The benchmark's UNet: SD 1.5's config, the variants it is built in, and guided sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch._inductor.config as inductor_config
from diffusers import DDIMScheduler, PNDMScheduler, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

# stable-diffusion-v1-5/unet/config.json, less the keys that only record defaults.
SD15_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
}
# The same block layout, small enough for a CPU in a test.
SMOKE_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "sample_size": 16,
}
# SD 1.5's scheduler_config.json; DDIM with the same betas for comparison.
SCHEDULER_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
SCHEDULERS: dict[str, Callable[[], Any]] = {
    "pndm": lambda: PNDMScheduler(
        **SCHEDULER_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1
    ),
    "ddim": lambda: DDIMScheduler(
        **SCHEDULER_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    ),
}
TEXT_TOKENS = 77
GUIDANCE_SCALE = 7.5
# Inductor settings the diffusers guide to fast SD inference recommends; they lengthen compiles.
TUNED_INDUCTOR = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}
DEFAULT_INDUCTOR = {name: getattr(inductor_config, name) for name in TUNED_INDUCTOR}


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    channels_last: bool = False
    fuse_qkv: bool = False
    cudnn_benchmark: bool = False
    compile_mode: str | None = None
    tuned_inductor: bool = False

    @property
    def cuda_graphs(self) -> bool:
        return self.compile_mode in ("reduce-overhead", "max-autotune")


VARIANTS = (
    Variant("eager", "plain diffusers, eager, SDPA attention (baseline)"),
    Variant("channels_last", "eager, UNet in channels_last", channels_last=True),
    Variant(
        "goshen",
        "eager, channels_last + fused QKV (DiffusersGenerator on CUDA)",
        channels_last=True,
        fuse_qkv=True,
    ),
    Variant(
        "compile-reduce-overhead",
        "goshen + cudnn.benchmark + torch.compile(mode='reduce-overhead'): CUDA graphs",
        channels_last=True,
        fuse_qkv=True,
        cudnn_benchmark=True,
        compile_mode="reduce-overhead",
    ),
    Variant(
        "compile-max-autotune",
        "goshen + cudnn.benchmark + torch.compile(mode='max-autotune') with the diffusers "
        "guide's inductor settings: autotuned kernels, CUDA graphs",
        channels_last=True,
        fuse_qkv=True,
        cudnn_benchmark=True,
        compile_mode="max-autotune",
        tuned_inductor=True,
    ),
)


@dataclass(frozen=True)
class Setup:
    """What every cell of a run shares."""

    config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    steps: int
    repeats: int
    scheduler: str
    peak_tflops: float

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.config["sample_size"]
        return (self.config["in_channels"], side, side)


def build_unet(variant: Variant, setup: Setup) -> torch.nn.Module:
    """A UNet with the same random weights for every variant, prepared as the variant says."""
    torch.manual_seed(0)
    with torch.device(setup.device):  # initialise on the GPU: minutes faster than on the CPU
        unet = UNet2DConditionModel(**setup.config)
    if setup.dtype == torch.float16:
        unet = unet.half()  # .to(dtype) warns about float32-only modules, which this UNet lacks
    unet = unet.eval().requires_grad_(False)
    if variant.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    if variant.fuse_qkv:
        unet.fuse_qkv_projections()
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    if variant.compile_mode is None:
        return unet
    set_inductor(TUNED_INDUCTOR if variant.tuned_inductor else DEFAULT_INDUCTOR)
    # dynamic=False: one graph specialised per batch size, as a serving worker would keep.
    return torch.compile(unet, mode=variant.compile_mode, fullgraph=True, dynamic=False)


def set_inductor(settings: dict[str, bool]) -> None:
    for name, value in settings.items():
        setattr(inductor_config, name, value)


def inputs(setup: Setup, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents for `batch` images and text embeddings for their 2 x batch guided rows."""
    generator = torch.Generator("cpu").manual_seed(batch)
    latents = torch.randn((batch, *setup.latent_shape), generator=generator)
    width = setup.config["cross_attention_dim"]
    embeddings = torch.randn((2 * batch, TEXT_TOKENS, width), generator=generator)
    return (
        latents.to(setup.device, setup.dtype),
        embeddings.to(setup.device, setup.dtype),
    )


def sample(
    unet: Any, variant: Variant, setup: Setup, latents: torch.Tensor, embeddings: torch.Tensor
) -> int:
    """One guided sampling loop, as StableDiffusionPipeline runs it; the UNet calls it made."""
    scheduler = SCHEDULERS[setup.scheduler]()
    scheduler.set_timesteps(setup.steps)
    # The scheduler indexes its tables with CPU timesteps (no GPU sync); the UNet gets them on
    # the device, so a compiled graph sees a tensor input, not a new constant each step.
    on_device = scheduler.timesteps.to(setup.device)
    for timestep, device_timestep in zip(scheduler.timesteps.tolist(), on_device, strict=True):
        if variant.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # last step's UNet output is consumed
        rows = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
        noise = unet(rows, device_timestep, encoder_hidden_states=embeddings, return_dict=False)
        unconditional, text = noise[0].chunk(2)
        guided = unconditional + GUIDANCE_SCALE * (text - unconditional)
        latents = scheduler.step(guided, timestep, latents, return_dict=False)[0]
    return len(on_device)


def forward_flops(config: dict[str, Any]) -> tuple[int, int]:
    """(FLOPs, parameters) of one UNet forward on the 2 latents of one guided image.

    Counted on the meta device: FLOPs follow from shapes alone, so no weights or compute are
    needed, and the figure is the same for every variant (fusing QKV changes no FLOP count).
    """
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        side = config["sample_size"]
        latents = torch.empty((2, config["in_channels"], side, side))
        embeddings = torch.empty((2, TEXT_TOKENS, config["cross_attention_dim"]))
        timestep = torch.tensor(500)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(latents, timestep, encoder_hidden_states=embeddings, return_dict=False)
    return counter.get_total_flops(), sum(p.numel() for p in unet.parameters())


def probe_output(unet: Any, variant: Variant, setup: Setup) -> torch.Tensor:
    """One forward on fixed inputs, copied to the CPU: what variants are compared on."""
    latents, embeddings = inputs(setup, 1)
    timestep = torch.tensor(500, device=setup.device)
    if variant.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    # The loop's own call signature: a compiled UNet reuses its graph instead of recompiling.
    output = unet(
        torch.cat([latents] * 2), timestep, encoder_hidden_states=embeddings, return_dict=False
    )
    return output[0].float().cpu()
