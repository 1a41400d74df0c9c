"""Stable Diffusion 1.5's UNet on a GPU: denoising steps per second, images per second, and how
close each variant comes to the compute-bound limit.

    python bench/sd_unet_gpu.py --out sd_unet.json                  # every variant, CUDA
    python bench/sd_unet_gpu.py --variants eager,goshen --batch-sizes 1,8 --out quick.json
    python bench/sd_unet_gpu.py --smoke --out smoke.json            # CPU, tiny UNet, seconds

One iteration is one step of classifier-free-guided sampling at 512x512 for each image of the
batch: one UNet forward on 2 x batch latents 4x64x64 with 77x768 text embeddings, the guidance
mix and the scheduler step (SD 1.5's PNDM). Images/s is batch size over the time of one whole
sampling loop (`--steps`, 30 by default as in Goshen's API), text encoder and VAE left out.
The UNet has SD 1.5's architecture (its config is written out in sd_unet_model.py) and random
weights, in half precision: nothing is downloaded. Warm-up runs (and compilation) are excluded;
CUDA events time whole sampling loops. FLOPs are counted once, by FlopCounterMode on a forward.

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
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sd_unet_model import (
    SCHEDULERS,
    SD15_UNET_CONFIG,
    SMOKE_UNET_CONFIG,
    VARIANTS,
    Setup,
    Variant,
    build_unet,
    forward_flops,
    inputs,
    probe_output,
    sample,
)
from sd_unet_report import header, markdown, summary, write

H100_DENSE_FP16_TFLOPS = 989.0  # H100 / H200 SXM tensor cores, dense (no sparsity)


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
