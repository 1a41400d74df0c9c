"""What an upload check concludes: the accepted model, or a refusal and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from goshen.errors import InvalidInputError, PayloadTooLargeError
from goshen.runtimes.onnx.schema import public_schema
from goshen.runtimes.onnx.signature import TensorSpec

MEMORY_SIGNS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "Failed to allocate")


@dataclass(frozen=True)
class ValidatedModel:
    """What the check learned about an accepted model."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset_imports: dict[str, int]
    providers: list[str]

    def public_schema(self) -> dict[str, Any]:
        """The schema /predict publishes for it, without loading the model in this process."""
        return public_schema(self.inputs, self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """The child's verdict for an accepted model (JSON)."""
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "opset_imports": self.opset_imports,
            "providers": self.providers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidatedModel:
        """The inverse of `to_dict`."""
        return cls(
            [TensorSpec.from_dict(spec) for spec in data["inputs"]],
            [TensorSpec.from_dict(spec) for spec in data["outputs"]],
            {str(domain): int(version) for domain, version in data["opset_imports"].items()},
            [str(provider) for provider in data["providers"]],
        )


def refused(message: str, status: str = "invalid") -> dict[str, Any]:
    """A refusal verdict, in the JSON form the child writes."""
    return {"ok": False, "status": status, "error": message}


def check_size(size: int, max_bytes: int) -> None:
    """Refuse a model that, with its external data, takes more than `max_bytes`."""
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"the model takes {size} bytes (with its external data), over the limit of "
            f"{max_bytes} (GOSHEN_MAX_MODEL_UPLOAD_BYTES)"
        )


def invalid(message: str) -> InvalidInputError:
    """A refusal of the uploaded file, saying what is wrong with it."""
    return InvalidInputError(message, field="file")
