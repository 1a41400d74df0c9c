"""ONNX Runtime session settings for /predict, timed on the digits classifier.

    python bench/onnx_predict.py [--repeats 7] [--calls 500]

The classifier is the platform's own (TabularNet, the digits config's layer sizes, exported by
goshen_pipelines) with random weights: speed does not depend on training. Each variant is a CPU
session with ORT_ENABLE_ALL; they differ in intra-op threads, spinning and execution mode.
Variants are interleaved within every repeat, so load from neighbours falls on all alike; figures
are medians of microseconds per call with one caller, and calls per second with two threads
calling the same session at once (what concurrent requests without batching do).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from goshen.runtimes.onnx.session import predict_session
from goshen_pipelines.lib.classifier import (
    DIGITS_CLASSIFIER_CONFIG,
    TabularNet,
    TrainedTabularModel,
)
from goshen_pipelines.lib.digits import classifier_features, load_digit_images
from goshen_pipelines.lib.export import export_tabular_model

BATCHES = (1, 8, 32, 64)
WARMUP_CALLS = 20


def export_classifier(folder: Path, features: np.ndarray) -> Path:
    """The digits classifier with random weights, exported as the pipelines export it."""
    torch.manual_seed(0)
    config = DIGITS_CLASSIFIER_CONFIG
    mean = torch.from_numpy(features.mean(axis=0))
    std = torch.from_numpy(features.std(axis=0) + config.input_noise)
    net = TabularNet(config.hidden_sizes, config.dropout, mean, std, num_outputs=10).eval()
    model = TrainedTabularModel(net, "classification", features.shape[1], list(range(10)), {})
    return export_tabular_model(model, folder / "model.onnx", features)


def session(path: Path, threads: int, *, spin: bool, parallel: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads if parallel else 1
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def variants(path: Path) -> dict[str, ort.InferenceSession]:
    cores = os.cpu_count() or 1
    return {
        "predict_session (1 thread)": predict_session(path),
        f"{cores} threads, spinning": session(path, cores, spin=True, parallel=False),
        f"{cores} threads, no spinning": session(path, cores, spin=False, parallel=False),
        f"{cores} threads, parallel mode": session(path, cores, spin=False, parallel=True),
    }


def per_call_us(run: ort.InferenceSession, feeds: dict[str, np.ndarray], calls: int) -> float:
    for _ in range(WARMUP_CALLS):
        run.run(None, feeds)
    started = time.perf_counter()
    for _ in range(calls):
        run.run(None, feeds)
    return (time.perf_counter() - started) / calls * 1e6


def two_callers(run: ort.InferenceSession, feeds: dict[str, np.ndarray], calls: int) -> float:
    """Calls per second with two threads calling the same session."""

    def work() -> None:
        for _ in range(calls):
            run.run(None, feeds)

    threads = [threading.Thread(target=work) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 2 * calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    images, _ = load_digit_images()
    features = classifier_features(images).astype(np.float32)
    with tempfile.TemporaryDirectory() as workdir:
        sessions = variants(export_classifier(Path(workdir), features))
        single: dict[tuple[str, int], list[float]] = {}
        double: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for batch in BATCHES:
                feeds = {"features": np.ascontiguousarray(features[:batch])}
                for name, run in sessions.items():
                    single.setdefault((name, batch), []).append(per_call_us(run, feeds, args.calls))
                    double.setdefault((name, batch), []).append(two_callers(run, feeds, args.calls))
    print(f"{os.cpu_count()} cores; median µs per call (one caller) | calls/s (two callers)")
    print("| variant | " + " | ".join(f"batch {batch}" for batch in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for name in sessions:
        cells = [
            f"{statistics.median(single[name, b]):.1f} µs · "
            f"{statistics.median(double[name, b]) / 1000:.1f}k/s"
            for b in BATCHES
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
