"""The benchmark's report: its header, summary, JSON file and BENCHMARKS.md tables."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import diffusers
import torch
from sd_unet_model import GUIDANCE_SCALE, TEXT_TOKENS, VARIANTS, Setup

ISSUE_TFLOP_PER_FORWARD = 0.8
TARGET_ITS, AIM_ITS = 66.0, 100.0  # at batch 1: the published torch.compile figure, and the aim


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
