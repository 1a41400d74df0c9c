"""The Lightning Trainer settings every built-in training loop shares."""

from __future__ import annotations

import os
import tempfile
import warnings

import lightning as L
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader


def fit(module: L.LightningModule, loader: DataLoader, epochs: int) -> None:
    """Train on the best accelerator (GPU when present), writing nothing to the working directory."""
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="goshen-train-") as root, warnings.catch_warnings():
        # The data is an in-memory tensor; loader worker processes would only add start-up time.
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            max_epochs=epochs,
            # "warn" rather than True: a CUDA kernel without a deterministic variant must not fail a run.
            deterministic="warn",
            enable_checkpointing=False,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        trainer.fit(module, loader)
