"""Tiny models with random weights for the load test, registered in MLflow as training would
register the real ones: nothing to download or train, and quick enough that the API, not the
model, is what the load measures."""

from __future__ import annotations

import tempfile
from pathlib import Path

# The digits UNet at its smallest: 8x8 images, 4 DDPM steps (the trained one takes 25).
TINY_DIGITS = {
    "image_size": 8,
    "block_out_channels": (8, 16),
    "norm_num_groups": 4,
    "num_inference_steps": 4,
}
NUM_CLASSES = 10  # the digits; class 10 is the null class guidance steers away from


def register_tiny_generator(tracking_uri: str, name: str) -> str:
    """A class-conditional digits UNet with seeded random weights, exported to ONNX, registered
    as a new version of `name` and aliased `production`; the name."""
    import mlflow
    import onnx
    import torch

    from goshen import registry
    from goshen.runtimes.diffusion import DiffusionModelSpec
    from goshen_pipelines.lib import export
    from goshen_pipelines.lib.diffusion import DiffusionConfig, build_unet, noise_scheduler_config

    config = DiffusionConfig(**TINY_DIGITS)
    torch.manual_seed(0)
    unet = build_unet(config, num_class_embeds=NUM_CLASSES + 1).eval()
    spec = DiffusionModelSpec(
        image_size=config.image_size,
        num_classes=NUM_CLASSES,
        scheduler_config=noise_scheduler_config(config),
        null_class=NUM_CLASSES,
        guidance_scale=2.0,
        num_inference_steps=config.num_inference_steps,
    )
    _use(tracking_uri)
    with tempfile.TemporaryDirectory() as workdir, mlflow.start_run():
        path = export.export_denoiser(unet, Path(workdir) / "model.onnx", NUM_CLASSES + 1)
        version = registry.log_onnx_model(
            onnx.load(str(path)),
            name,
            metadata={"kind": "diffusion", "diffusion": spec.to_dict()},
            tags={registry.CHECKS_TAG: "true", registry.METRIC_TAG: "0.0"},
        )
    mlflow.MlflowClient().set_registered_model_alias(name, registry.PRODUCTION, version.version)
    return name


def register_tiny_classifier(tracking_uri: str, name: str) -> str:
    """A digits-shaped classifier (features float32 [B, 64] -> probabilities [B, 10]) with
    seeded random weights, exported to ONNX, registered as `name` and aliased `production`."""
    import mlflow
    import numpy as np
    import onnx
    import torch

    from goshen import registry
    from goshen_pipelines.lib import export

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, NUM_CLASSES),
        torch.nn.Softmax(dim=1),
    ).eval()
    features = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    metadata = {
        "kind": "onnx",
        "task": "classification",
        "classes": [str(digit) for digit in range(NUM_CLASSES)],
        "input_ranges": {"features": [0.0, 1.0]},
    }
    _use(tracking_uri)
    with tempfile.TemporaryDirectory() as workdir, mlflow.start_run():
        path = export.export_onnx(
            module, Path(workdir) / "model.onnx", {"features": features}, "probabilities"
        )
        version = registry.log_onnx_model(
            onnx.load(str(path)), name, metadata=metadata, tags={registry.CHECKS_TAG: "true"}
        )
    mlflow.MlflowClient().set_registered_model_alias(name, registry.PRODUCTION, version.version)
    return name


def _use(tracking_uri: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("load-test")
