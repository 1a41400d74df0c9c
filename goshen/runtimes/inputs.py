"""What a generation request may ask of each runtime: bounded, documented input schemas.

Each catalog entry publishes its runtime's schema as JSON Schema with examples; the API checks a
request against it before anything is queued. `batch_key` says which requests may share a batch.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from goshen.db.models import ModelRuntime
from goshen.text import MULTILINE, ONE_LINE

MAX_SEED = 2**32 - 1
MAX_STEPS = 200
MAX_CLASS_IMAGES = 16  # per request, to class-conditional generators
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
# The fields the class-conditional generators share.
ClassImages = Annotated[
    int, Field(default=1, ge=1, le=MAX_CLASS_IMAGES, description="images to make")
]
SamplingSteps = Annotated[
    int | None,
    Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="denoising steps; left out, the model's trained default (25)",
    ),
]
SamplingScheduler = Annotated[
    Literal["ddpm", "ddim"] | None,
    Field(
        default=None,
        description="ddpm (ancestral, the trained default) or ddim (deterministic)",
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
    num_images: ClassImages = 1
    num_inference_steps: SamplingSteps = None
    scheduler: SamplingScheduler = None
    seed: Seed = None

    def batch_fields(self) -> dict[str, Any]:
        return {"steps": self.num_inference_steps, "scheduler": self.scheduler}


def _class_label(value: object) -> str | int:
    """A class name or index as sent; one check for both, so an error is at ("label",) alone."""
    if isinstance(value, str):
        return ONE_LINE.check(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise PydanticCustomError(
                "label_index_negative", "a class index is 0 or more, got {index}", {"index": value}
            )
        return value
    raise PydanticCustomError(
        "label_type", "must be a class name (a string) or a class index (an integer)"
    )


ClassLabel = Annotated[
    str | int,
    PlainValidator(_class_label),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": ONE_LINE.pattern},
                {"type": "integer", "minimum": 0},
            ]
        }
    ),
]


class LabeledImagesInput(GenerationInput):
    """Input of class-conditional generators trained on a labeled image dataset.

    The generic schema takes any class name or index; a catalog entry publishes its own
    (`labeled_schema`) and requests are checked against its classes (`with_class_name`).
    """

    model_config = ConfigDict(extra="forbid", title="LabeledImagesInput")

    label: ClassLabel = Field(
        description="the class to draw: one of the model's class names, or a class index "
        "from 0 to the number of classes less one (the model's schema lists its classes)"
    )
    num_images: ClassImages = 1
    num_inference_steps: SamplingSteps = None
    scheduler: SamplingScheduler = None
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


def input_model_for(runtime: ModelRuntime, classes: Sequence[str] | None) -> type[GenerationInput]:
    """The input class of a catalog entry: LabeledImagesInput when it has classes (a trained
    class-conditional generator), else its runtime's."""
    if classes is None:
        return input_model(runtime)
    if runtime != ModelRuntime.onnx_diffusion:
        raise ValueError(f"runtime {runtime} has no classes; only onnx_diffusion entries do")
    return LabeledImagesInput


def labeled_schema(classes: Sequence[str], image_size: int) -> tuple[dict[str, Any], list[Any]]:
    """The JSON Schema and examples a catalog entry with these classes (by class index)
    publishes, its model drawing image_size x image_size images."""
    if not classes:
        raise ValueError("a class-conditional model has at least one class")
    last = len(classes) - 1
    numbered = numbered_classes(classes)
    examples: list[Any] = [
        {"label": classes[0], "num_images": 4, "seed": 42},
        {
            "label": int(classes[last]) if numbered else last,
            "num_images": 2,
            "num_inference_steps": 50,
            "scheduler": "ddim",
        },
    ]
    schema = LabeledImagesInput.model_json_schema()
    schema["description"] = (
        f"Draws {image_size}x{image_size} grayscale PNGs of the class you ask for. Classes, by "
        f"index: {_listing(classes)}."
    )
    by_number: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": last}
    description = f"the class to draw: its name, or its index from 0 to {last}"
    if numbered:
        by_number = {"type": "integer", "enum": [int(name) for name in classes]}
        description = "the class to draw: its name, as a string or as the number it is"
    schema["properties"]["label"] = {
        "anyOf": [{"type": "string", "enum": list(classes)}, by_number],
        "title": "Label",
        "description": description,
    }
    schema["examples"] = examples
    return schema, examples


def numbered_classes(classes: Sequence[str]) -> bool:
    """Whether every class is named by a whole number, as written (`7`, not `07`)."""
    return all(name.isdecimal() and str(int(name)) == name for name in classes)


def with_class_name(model_input: LabeledImagesInput, classes: Sequence[str]) -> LabeledImagesInput:
    """The input with its label as the class name, checked against the entry's classes (by
    index); a label that names no class is a ValidationError at ("label",)."""
    label = model_input.label
    if isinstance(label, int) and numbered_classes(classes):
        # Classes named by numbers (folders 0..9): a number is a class's name, not an index.
        label = str(label)
    if isinstance(label, str):
        if label in classes:
            return model_input.model_copy(update={"label": label})
        error = PydanticCustomError(
            "label_unknown",
            "{label} is not a class of this model; its classes are {classes}, "
            "or their index from 0 to {last}",
            {"label": repr(label[:100]), "classes": _listing(classes), "last": len(classes) - 1},
        )
    elif label < len(classes):
        return model_input.model_copy(update={"label": classes[label]})
    else:
        error = PydanticCustomError(
            "label_index_out_of_range",
            "class index {label} is out of range: this model has {count} classes, 0 to {last} "
            "({classes})",
            {
                "label": label,
                "count": len(classes),
                "last": len(classes) - 1,
                "classes": _listing(classes),
            },
        )
    raise ValidationError.from_exception_data(
        LabeledImagesInput.__name__,
        [InitErrorDetails(type=error, loc=("label",), input=label)],
    )


def checked_input(
    runtime: ModelRuntime, classes: Sequence[str] | None, data: Any
) -> GenerationInput:
    """A request's input validated against a catalog entry's schema; a labeled input's label
    becomes its class name. Raises ValidationError."""
    model_input = input_model_for(runtime, classes).model_validate(data)
    if isinstance(model_input, LabeledImagesInput):
        assert classes is not None, "input_model_for gives LabeledImagesInput for classes only"
        return with_class_name(model_input, classes)
    return model_input


def _listing(classes: Sequence[str], most: int = 20) -> str:
    """Class names for a message, the first `most` of them."""
    shown = ", ".join(repr(name[:100]) for name in classes[:most])
    return shown if len(classes) <= most else f"{shown} and {len(classes) - most} more"


def batch_key(model_input: GenerationInput) -> str:
    """A short digest of the fields that must match for two requests to share a batch."""
    fields = json.dumps(model_input.batch_fields(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(fields.encode()).hexdigest()[:32]
