"""validate_onnx_upload: an uploaded .onnx checked in a child process capped in memory and time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goshen.errors import InvalidInputError, PayloadTooLargeError
from goshen.model_uploads.verdict import MEMORY_SIGNS, ValidatedModel, check_size, refused

_STDERR_TAIL = 4000
# The child is goshen.model_uploads.child's `child_main`. It sets its own memory cap before
# importing anything that reads the model: subprocess's preexec_fn runs Python between fork and
# exec, which the Python docs call unsafe in a threaded process, and the API server that calls
# this is one.
_CHILD = (
    "import resource, sys\n"
    "cap = int(sys.argv[2])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
    "from goshen.model_uploads.child import child_main\n"
    "child_main(sys.argv[1], int(sys.argv[3]))\n"
)
# One thread per math library: each reserves address space the cap would otherwise count.
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class ModelUploadLimits:
    """Bounds on one upload's check: file bytes (with external data), child memory, seconds.

    `memory_bytes` caps the child's whole address space, the checker's own included (Python,
    onnx and ONNX Runtime take about 200 MiB of it before the model is read).
    """

    max_bytes: int
    memory_bytes: int
    timeout_seconds: float


def validate_onnx_upload(model_file: Path, limits: ModelUploadLimits) -> ValidatedModel:
    """Check an uploaded .onnx in a capped child process; InvalidInputError(field="file") or
    PayloadTooLargeError when it is refused, saying what is wrong and what to do."""
    model_file = Path(model_file)
    if model_file.is_symlink() or not model_file.is_file():
        raise InvalidInputError("the upload is not a regular file", field="file")
    check_size(model_file.stat().st_size, limits.max_bytes)
    verdict = _run_child(model_file, limits)
    if verdict.get("ok"):
        return ValidatedModel.from_dict(verdict["model"])
    message = str(verdict.get("error", "the model was refused"))
    if verdict.get("status") == "too_large":
        raise PayloadTooLargeError(message)
    if verdict.get("status") == "memory":
        raise InvalidInputError(_memory_message(limits), field="file")
    raise InvalidInputError(message, field="file")


def _run_child(model_file: Path, limits: ModelUploadLimits) -> dict[str, Any]:
    """The child's JSON verdict; a refusal verdict when it timed out or died without one."""
    command = [
        sys.executable,
        "-P",  # the current folder stays off sys.path
        "-c",
        _CHILD,
        str(model_file),
        str(limits.memory_bytes),
        str(limits.max_bytes),
    ]
    # A file, not a pipe: whatever the runtime logs, the parent keeps a bounded tail of it.
    with tempfile.TemporaryFile() as stderr:
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=limits.timeout_seconds,
                env={**os.environ, **_CHILD_ENV},
                check=False,
            )
        except subprocess.TimeoutExpired:
            return refused(
                f"checking the model took longer than {limits.timeout_seconds:g} s; a model "
                "that slow to load is refused (simplify it, or ask an operator to raise "
                "GOSHEN_MODEL_VALIDATION_TIMEOUT_SECONDS)"
            )
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - _STDERR_TAIL))
        errors = stderr.read().decode(errors="replace")
    try:
        verdict = json.loads(done.stdout)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _died(done.returncode, errors)
    return verdict if isinstance(verdict, dict) else _died(done.returncode, errors)


def _died(returncode: int, errors: str) -> dict[str, Any]:
    """The verdict for a child that ended without writing one: out of memory, or a crash."""
    # SIGKILL is the kernel's OOM killer (a container's memory limit below the cap).
    if any(sign in errors for sign in MEMORY_SIGNS) or returncode == -signal.SIGKILL:
        return {"ok": False, "status": "memory"}
    how = (
        f"signal {signal.Signals(-returncode).name}"
        if returncode < 0
        else f"exit status {returncode}"
    )
    return refused(
        f"checking the model crashed ONNX tooling ({how}); the file is refused. Re-export it "
        "with a current exporter and check it with onnx.checker.check_model"
    )


def _memory_message(limits: ModelUploadLimits) -> str:
    return (
        f"checking the model needed more than {limits.memory_bytes // 2**20} MiB of memory, the "
        "limit for model checks; upload a smaller model (or ask an operator to raise "
        "GOSHEN_MODEL_VALIDATION_MEMORY_BYTES)"
    )
