"""The ONNX Runtime session /predict runs a model in, and the device it computes on."""

from __future__ import annotations

import os

import onnxruntime as ort

from goshen.runtimes.devices import Device, cpu_device, detect_device


def predict_session(
    path: str | os.PathLike[str], intra_op_threads: int = 1
) -> ort.InferenceSession:
    """A session for /predict: CUDA when the installed runtime offers it, else the CPU.

    One intra-op thread by default: on the digits classifier it is the fastest at every batch
    size from 1 to 64, alone and with two callers at once (BENCHMARKS.md, bench/onnx_predict.py);
    small graphs lose more to waking threads than they gain from splitting operators.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Threads beyond the first sleep between calls instead of spinning on the API's cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Only ONNX protobuf: ONNX Runtime would otherwise also take its own .ort format.
    options.add_session_config_entry("session.load_model_format", "ONNX")
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)


def session_device(session: ort.InferenceSession) -> Device:
    """Where the session computes: ONNX Runtime falls back to the CPU when CUDA fails to load."""
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return cpu_device()
    found = detect_device()
    # PyTorch may be a CPU build beside onnxruntime-gpu; the session is on CUDA all the same.
    return found if found.kind == "cuda" else Device("cuda", "cuda:0", None)
