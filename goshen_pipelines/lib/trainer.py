"""The Lightning Trainer settings every built-in training loop shares."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader

# Batches of (inputs, targets) as a TensorDataset yields them.
TensorLoader = DataLoader[tuple[torch.Tensor, ...]]


def fit(module: L.LightningModule, loader: TensorLoader, epochs: int) -> None:
    """Train on the best accelerator (GPU when present), writing nothing to the working dir."""
    with (
        tempfile.TemporaryDirectory(prefix="goshen-train-") as root,
        _cpu_threads(training_threads()),
        warnings.catch_warnings(),
    ):
        # The data is an in-memory tensor; loader worker processes would only add start-up time.
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            max_epochs=epochs,
            # "warn", not True: a CUDA kernel with no deterministic variant must not fail a run.
            deterministic="warn",
            enable_checkpointing=False,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        trainer.fit(module, loader)


def training_threads() -> int:
    """CPU threads for training: every core but one.

    The spare core is for the platform's other processes (API, Dagster, MLflow): an OpenMP team
    sized to every core stalls at each barrier whenever one of them runs, which measured 2-5x
    slower on a 2-core machine than one thread fewer.
    """
    return max(1, (os.cpu_count() or 1) - 1)


@contextmanager
def _cpu_threads(count: int) -> Iterator[None]:
    """Use `count` intra-op threads for the block, then restore the process's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
