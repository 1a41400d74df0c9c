"""Stable Diffusion 1.5's UNet on a GPU: denoising steps per second, images per second, and how
close each variant comes to the compute-bound limit.

    python bench/sd_unet_gpu.py --out sd_unet.json                  # every variant, CUDA
    python bench/sd_unet_gpu.py --variants eager,goshen --batch-sizes 1,8 --out quick.json
    python bench/sd_unet_gpu.py --smoke --out smoke.json            # CPU, tiny UNet, seconds

One iteration is one step of classifier-free-guided sampling at 512x512 for each image of the
batch: one UNet forward on 2 x batch latents 4x64x64 with 77x768 text embeddings, the guidance
mix and the scheduler step (SD 1.5's PNDM). Images/s is batch size over the time of one whole
sampling loop (`--steps`, 30 by default as in Goshen's API), text encoder and VAE left out.
The UNet has SD 1.5's architecture (its config is written out below) and random weights, in
half precision: nothing is downloaded. Warm-up runs (and compilation) are excluded; CUDA events
time whole sampling loops. FLOPs are counted once, by FlopCounterMode on a forward.

Variants: `eager` is plain diffusers (SDPA attention, its default) and the baseline; `goshen` is
what goshen.runtimes.pipelines.speed_up does on CUDA (channels_last, fused QKV projections);
the `compile-*` variants add cudnn autotuning and torch.compile with CUDA graphs. Cells run
cheapest first, and the JSON is rewritten after each one, so a run cut short by `--budget-minutes`
or a timeout still reports what it measured. Needs only torch and diffusers.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
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
H100_DENSE_FP16_TFLOPS = 989.0  # H100 / H200 SXM tensor cores, dense (no sparsity)
ISSUE_TFLOP_PER_FORWARD = 0.8
TARGET_ITS, AIM_ITS = 66.0, 100.0  # at batch 1: the published torch.compile figure, and the aim
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


def timed(setup: Setup, run: Callable[[], int]) -> tuple[int, float]:
    """(UNet calls, seconds) of one run: CUDA events on a GPU, the wall clock on the CPU."""
    if setup.device.type != "cuda":
        started = time.perf_counter()
        calls = run()
        return calls, time.perf_counter() - started
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    calls = run()
    end.record()
    end.synchronize()
    return calls, start.elapsed_time(end) / 1000


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


def measure(
    variant: Variant, batch: int, setup: Setup, flops: int
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """One cell: build (and compile) the variant, warm it up, time `repeats` sampling loops.

    Returns the figures and, at batch 1, the variant's output on the probe inputs. The caller
    releases the UNet's memory once this returns.
    """
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    graphs_before = compiled_graphs()
    with torch.inference_mode():
        started = time.perf_counter()
        unet = build_unet(variant, setup)
        latents, embeddings = inputs(setup, batch)
        loop = functools.partial(sample, unet, variant, setup, latents, embeddings)
        loop()  # compiles, records CUDA graphs, warms the caches
        warm_up_seconds = time.perf_counter() - started
        graphs_warmed_up = compiled_graphs()
        runs = [timed(setup, loop) for _ in range(setup.repeats)]
        probe = probe_output(unet, variant, setup) if batch == 1 else None
    calls = runs[0][0]
    seconds = statistics.median(run_seconds for _, run_seconds in runs)
    its = calls / seconds
    achieved = flops * batch * its / 1e12
    result = {
        "variant": variant.name,
        "batch_size": batch,
        "unet_calls_per_run": calls,
        "run_seconds": [round(run_seconds, 5) for _, run_seconds in runs],
        "its": round(its, 2),
        "images_per_s": round(batch / seconds, 3),
        "tflops": round(achieved, 1),
        "share_of_peak": round(achieved / setup.peak_tflops, 4),
        "warm_up_seconds": round(warm_up_seconds, 1),
        "peak_memory_gib": peak_memory_gib(setup),
        # Compiled variants make one graph; one made while timing means a recompile was timed.
        "graphs_compiled": graphs_warmed_up - graphs_before,
        "graphs_compiled_while_timed": compiled_graphs() - graphs_warmed_up,
    }
    return result, probe


def compiled_graphs() -> int:
    """Graphs torch.compile has captured in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def difference(probe: torch.Tensor | None, reference: torch.Tensor | None) -> float | None:
    """max |output - eager output| / max |eager output| on the probe inputs (NaN on overflow)."""
    if probe is None or reference is None:
        return None
    return float((probe - reference).abs().max() / reference.abs().max())


def peak_memory_gib(setup: Setup) -> float | None:
    if setup.device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def release() -> None:
    """Hand back what a dropped variant held (weights, graphs, compiled code) before the next."""
    torch._dynamo.reset()  # else compiled code of old cells counts toward recompile limits
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cells(variants: list[Variant], batch_sizes: list[int]) -> list[tuple[Variant, int]]:
    """Every (variant, batch size), cheapest first: eager ones at every size, compiled ones at
    batch 1, compiled ones at other sizes. Eager at batch 1 leads: outputs are compared with it."""

    def cost(cell: tuple[Variant, int]) -> tuple[int, int, int]:
        variant, batch = cell
        compiled = variant.compile_mode is not None
        return (int(compiled) + int(compiled and batch != 1), batch, VARIANTS.index(variant))

    return sorted(((v, b) for v in variants for b in batch_sizes), key=cost)


def run(args: argparse.Namespace, setup: Setup, variants: list[Variant]) -> dict[str, Any]:
    """Measure every cell within the budget, writing the report after each."""
    flops, parameters = forward_flops(setup.config)
    report = header(setup, flops, parameters)
    deadline = time.monotonic() + args.budget_minutes * 60
    reference: torch.Tensor | None = None
    for variant, batch in cells(variants, args.batch_sizes):
        if time.monotonic() > deadline:
            report["skipped"].append({"variant": variant.name, "batch_size": batch})
            continue
        print(f"measuring {variant.name} at batch {batch} ...", file=sys.stderr, flush=True)
        try:
            result, probe = measure(variant, batch, setup, flops)
        except RuntimeError as exc:  # a failed compile or out-of-memory ends a cell, not the run
            error = str(exc)[:4000]
            result, probe = {"variant": variant.name, "batch_size": batch, "error": error}, None
        release()
        if variant.name == "eager" and probe is not None:
            reference = probe
        if probe is not None:
            result["max_rel_diff_vs_eager"] = difference(probe, reference)
        report["results"].append(result)
        report["summary"] = summary(report["results"], setup, flops)
        write(args.out, report)
    return report


def header(setup: Setup, flops: int, parameters: int) -> dict[str, Any]:
    iteration_tflop = flops / 1e12
    return {
        "device": device_name(setup.device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "dtype": str(setup.dtype).removeprefix("torch."),
        "unet_config": setup.config,
        "unet_parameters": parameters,
        "latent_shape": list(setup.latent_shape),
        "text_tokens": TEXT_TOKENS,
        "guidance_scale": GUIDANCE_SCALE,
        "scheduler": setup.scheduler,
        "steps": setup.steps,
        "repeats": setup.repeats,
        "variants": {v.name: v.description for v in VARIANTS},
        "unet_forward_tflop_2_latents": round(iteration_tflop, 4),
        "unet_forward_tflop_per_latent": round(iteration_tflop / 2, 4),
        "issue_tflop_per_forward": ISSUE_TFLOP_PER_FORWARD,
        "peak_tflops": setup.peak_tflops,
        "compute_bound_its_batch_1": round(setup.peak_tflops / iteration_tflop, 1),
        "results": [],
        "skipped": [],
        "summary": {},
    }


def summary(results: list[dict[str, Any]], setup: Setup, flops: int) -> dict[str, Any]:
    """It/s at batch 1 and the best images/s, per variant; the target check."""
    done = [r for r in results if "error" not in r]
    at_one = {r["variant"]: r["its"] for r in done if r["batch_size"] == 1}
    best: dict[str, dict[str, Any]] = {}
    for r in done:
        if r["images_per_s"] > best.get(r["variant"], {}).get("images_per_s", -1):
            best[r["variant"]] = {"batch_size": r["batch_size"], "images_per_s": r["images_per_s"]}
    fastest = max(at_one.values(), default=None)
    limit = setup.peak_tflops * 1e12 / flops
    return {
        "its_batch_1": at_one,
        "best_images_per_s": best,
        "best_its_batch_1": fastest,
        "share_of_compute_bound_its_batch_1": round(fastest / limit, 4) if fastest else None,
        "speedup_vs_eager_batch_1": {
            name: round(its / at_one["eager"], 2) for name, its in at_one.items()
        }
        if "eager" in at_one
        else {},
        "target_its_batch_1": TARGET_ITS,
        "aim_its_batch_1": AIM_ITS,
        "meets_target": fastest is not None and fastest >= TARGET_ITS,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def write(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def markdown(report: dict[str, Any]) -> str:
    """The report as BENCHMARKS.md tables."""
    lines = [
        f"{report['device']}, torch {report['torch']}, diffusers {report['diffusers']}, "
        f"{report['dtype']}, latents {'x'.join(map(str, report['latent_shape']))}, "
        f"{report['scheduler']} {report['steps']} steps, guidance {report['guidance_scale']}",
        "",
        f"UNet forward (2 latents, one guided image): {report['unet_forward_tflop_2_latents']} "
        f"TFLOP measured ({report['unet_forward_tflop_per_latent']} per latent; the issue's "
        f"figure: {report['issue_tflop_per_forward']}). Compute-bound limit at "
        f"{report['peak_tflops']:.0f} TFLOP/s: {report['compute_bound_its_batch_1']} it/s at "
        "batch 1 (% of peak is the share of that limit at every batch size).",
        "",
        "| variant | batch | it/s | images/s | TFLOP/s | % of peak | warm-up s | peak GiB "
        "| graphs | max rel. diff vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['batch_size']} | error: {r['error'][:80]} |")
            continue
        lines.append(
            f"| {r['variant']} | {r['batch_size']} | {r['its']:.1f} | {r['images_per_s']:.2f} "
            f"| {r['tflops']:.0f} | {100 * r['share_of_peak']:.1f} | {r['warm_up_seconds']} "
            f"| {_number(r['peak_memory_gib'])} | {_graphs(r)} "
            f"| {_number(r.get('max_rel_diff_vs_eager'))} |"
        )
    return "\n".join([*lines, "", *summary_lines(report)])


def summary_lines(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    lines = [
        f"- it/s at batch 1: {s.get('its_batch_1')}; speed-up vs eager: "
        f"{s.get('speedup_vs_eager_batch_1')}",
        f"- best images/s ({report['steps']} steps): {s.get('best_images_per_s')}",
        f"- best it/s at batch 1: {s.get('best_its_batch_1')} (target {TARGET_ITS:.0f}, aim "
        f"{AIM_ITS:.0f}: {'met' if s.get('meets_target') else 'not met'}), "
        f"{_percent(s.get('share_of_compute_bound_its_batch_1'))} of the compute-bound limit",
    ]
    if report["skipped"]:
        skipped = ", ".join(f"{c['variant']}@{c['batch_size']}" for c in report["skipped"])
        lines.append(f"- skipped for the time budget: {skipped}")
    return lines


def _graphs(result: dict[str, Any]) -> str:
    timed = result["graphs_compiled_while_timed"]
    return f"{result['graphs_compiled']}" + (f" (+{timed} while timed!)" if timed else "")


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--smoke", action="store_true", help="tiny UNet on the CPU, no compile")
    parser.add_argument("--variants", help=f"comma-separated, of {[v.name for v in VARIANTS]}")
    parser.add_argument("--batch-sizes", type=_sizes, help="images per batch (1,2,4,8,16)")
    parser.add_argument("--steps", type=int, help="denoising steps per timed run (30)")
    parser.add_argument("--repeats", type=int, help="timed runs per cell; the median counts (3)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="pndm")
    parser.add_argument("--peak-tflops", type=float, default=H100_DENSE_FP16_TFLOPS)
    parser.add_argument(
        "--budget-minutes", type=float, default=9.0, help="start no new cell after this"
    )
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.batch_sizes = args.batch_sizes or ([1, 2] if smoke else [1, 2, 4, 8, 16])
    args.steps = args.steps or (1 if smoke else 30)
    args.repeats = args.repeats or (1 if smoke else 3)
    default_variants = "eager,goshen" if smoke else ",".join(v.name for v in VARIANTS)
    args.variants = _variants(args.variants or default_variants, smoke)
    return args


def _sizes(text: str) -> list[int]:
    return [int(size) for size in text.split(",")]


def _variants(text: str, smoke: bool) -> list[Variant]:
    known = {v.name: v for v in VARIANTS}
    unknown = [name for name in text.split(",") if name not in known]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(known)}")
    chosen = [known[name] for name in text.split(",")]
    if smoke and any(v.compile_mode for v in chosen):
        raise SystemExit("--smoke runs no torch.compile variant")
    return chosen


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU; --smoke runs a tiny UNet on the CPU")
    setup = Setup(
        config=SMOKE_UNET_CONFIG if args.smoke else SD15_UNET_CONFIG,
        device=torch.device("cpu" if args.smoke else "cuda"),
        dtype=torch.float32 if args.smoke else torch.float16,
        steps=args.steps,
        repeats=args.repeats,
        scheduler=args.scheduler,
        peak_tflops=args.peak_tflops,
    )
    report = run(args, setup, args.variants)
    print(markdown(report))


if __name__ == "__main__":
    main()
