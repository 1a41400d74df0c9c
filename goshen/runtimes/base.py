"""The runtime protocol: what every image generator offers the worker, whatever its engine.

Workers hold generators in a cache and call `generate` with every job of a batch at once. The
`on_step(step, total)` callback runs after each denoising step and answers which requests of the
batch to stop (canceled, timed out, lease lost); a generator stops them as early as it can and
returns None in their place. An exception from `on_step` aborts the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

from PIL import Image

from goshen.runtimes.devices import Device
from goshen.runtimes.inputs import GenerationInput

# (step, total) -> indices of the batch's requests to stop now.
StepReport = Callable[[int, int], AbstractSet[int]]


class ModelFormatError(Exception):
    """A model folder is not what its catalog entry says it is; the message says what is off."""


class ImageGenerator(Protocol):
    """A loaded model serving one catalog entry."""

    device: Device

    def generate(
        self, inputs: Sequence[GenerationInput], on_step: StepReport
    ) -> list[list[Image.Image] | None]:
        """Images per request, in order; None for requests `on_step` stopped."""
        ...

    def close(self) -> None:
        """Free what the model holds (GPU memory above all)."""
        ...
