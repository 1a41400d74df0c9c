"""What a generation request may ask of each runtime: bounded, documented input schemas.

Each catalog entry publishes its runtime's schema as JSON Schema with examples; the API checks a
request against it before anything is queued. `batch_key` says which requests may share a batch.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from goshen.db.models import ModelRuntime
from goshen.text import MULTILINE

MAX_SEED = 2**32 - 1
MAX_STEPS = 200
MAX_DIGIT_IMAGES = 16
MAX_TEXT_IMAGES = 4
MAX_PROMPT_CHARACTERS = 2000
MAX_SIDE = 1024
MIN_SIDE = 64

Seed = Annotated[
    int | None,
    Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="random seed; the same seed on the same device gives the same images. "
        "Left out, the server picks one and reports it in the job's input",
    ),
]


class GenerationInput(BaseModel):
    """Common ground of every runtime's input: unknown fields are refused, values are not
    coerced (`true` or `"3"` is no integer, as the published JSON Schema says), seeds are filled in.

    Subclasses declare `seed` and `num_images` where they belong in their own field order.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    if TYPE_CHECKING:
        seed: int | None
        num_images: int

    def with_seed(self) -> GenerationInput:
        """This input with a seed, chosen at random when the request left it out."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})

    def batch_fields(self) -> dict[str, Any]:
        """The fields requests must share to run as one batch."""
        raise NotImplementedError


class DigitsInput(GenerationInput):
    """Input of the platform's class-conditional digit generators (digits-diffusion)."""

    model_config = ConfigDict(
        extra="forbid",
        title="DigitsDiffusionInput",
        json_schema_extra={
            "examples": [
                {"digit": 7, "num_images": 4, "seed": 42},
                {"digit": 3, "num_images": 16, "num_inference_steps": 50, "scheduler": "ddim"},
            ]
        },
    )

    digit: int = Field(ge=0, le=9, description="the digit to draw, 0 to 9")
    num_images: int = Field(default=1, ge=1, le=MAX_DIGIT_IMAGES, description="images to make")
    num_inference_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="denoising steps; left out, the model's trained default (25)",
    )
    scheduler: Literal["ddpm", "ddim"] | None = Field(
        default=None,
        description="ddpm (ancestral, the trained default) or ddim (deterministic)",
    )
    seed: Seed = None

    def batch_fields(self) -> dict[str, Any]:
        return {"steps": self.num_inference_steps, "scheduler": self.scheduler}


Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]
Prompt = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARACTERS), MULTILINE]


class TextToImageInput(GenerationInput):
    """Input of Stable-Diffusion-family text-to-image pipelines."""

    model_config = ConfigDict(
        extra="forbid",
        title="TextToImageInput",
        json_schema_extra={
            "examples": [
                {"prompt": "a lighthouse on a cliff at dawn, oil painting", "seed": 7},
                {
                    "prompt": "a red fox in fresh snow, photograph",
                    "negative_prompt": "blurry, low quality",
                    "width": 768,
                    "height": 512,
                    "num_inference_steps": 30,
                    "guidance_scale": 6.5,
                    "num_images": 2,
                },
            ]
        },
    )

    prompt: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARACTERS), MULTILINE
    ] = Field(description=f"what to draw, at most {MAX_PROMPT_CHARACTERS} characters")
    negative_prompt: Prompt = Field(default="", description="what to steer away from")
    width: Side = Field(default=512, description="pixels, a multiple of 8, 64 to 1024")
    height: Side = Field(default=512, description="pixels, a multiple of 8, 64 to 1024")
    num_inference_steps: int = Field(default=30, ge=1, le=MAX_STEPS, description="denoising steps")
    guidance_scale: float = Field(
        default=7.5, ge=0, le=30, description="classifier-free guidance; 1 or less turns it off"
    )
    num_images: int = Field(default=1, ge=1, le=MAX_TEXT_IMAGES, description="images to make")
    seed: Seed = None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    def batch_fields(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
        }


INPUTS: dict[ModelRuntime, type[GenerationInput]] = {
    ModelRuntime.onnx_diffusion: DigitsInput,
    ModelRuntime.diffusers: TextToImageInput,
}


def input_model(runtime: ModelRuntime) -> type[GenerationInput]:
    """The input class of a generation runtime; ValueError for runtimes that do not generate."""
    if runtime not in INPUTS:
        raise ValueError(f"runtime {runtime} does not generate images")
    return INPUTS[runtime]


def input_schema(runtime: ModelRuntime) -> dict[str, Any]:
    """The JSON Schema (with examples) a catalog entry of this runtime publishes."""
    return input_model(runtime).model_json_schema()


def batch_key(model_input: GenerationInput) -> str:
    """A short digest of the fields that must match for two requests to share a batch."""
    fields = json.dumps(model_input.batch_fields(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(fields.encode()).hexdigest()[:32]
