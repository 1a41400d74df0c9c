"""Inputs of generators trained on labeled images: the schema an entry publishes, labels checked
against its classes and stored by name, and strictness (no coercion, a bool is no index)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from goshen.db.models import ModelRuntime
from goshen.runtimes.inputs import (
    DigitsInput,
    LabeledImagesInput,
    TextToImageInput,
    batch_key,
    checked_input,
    input_model_for,
    labeled_schema,
    with_class_name,
)

CLASSES = ["zero", "one", "two"]


def _check(model_input: dict[str, Any]) -> LabeledImagesInput:
    checked = checked_input(ModelRuntime.onnx_diffusion, CLASSES, model_input)
    assert isinstance(checked, LabeledImagesInput)
    return checked


def _error(model_input: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        _check(model_input)
    (error,) = caught.value.errors()
    assert error["loc"] == ("label",)
    return dict(error)


def test_the_schema_lists_the_classes_by_name_and_index() -> None:
    schema, examples = labeled_schema(CLASSES, 16)
    assert schema["properties"]["label"]["anyOf"] == [
        {"type": "string", "enum": CLASSES},
        {"type": "integer", "minimum": 0, "maximum": 2},
    ]
    assert schema["required"] == ["label"]
    assert "16x16 grayscale PNGs" in schema["description"]
    assert all(f"'{name}'" in schema["description"] for name in CLASSES)
    assert schema["examples"] == examples
    assert examples[0]["label"] == "zero"
    assert schema["properties"]["num_images"]["maximum"] == 16


def test_the_schema_examples_pass_validation() -> None:
    _, examples = labeled_schema(CLASSES, 8)
    assert [_check(example).label for example in examples] == ["zero", "two"]


def test_a_schema_needs_classes() -> None:
    with pytest.raises(ValueError, match="at least one class"):
        labeled_schema([], 8)


def test_a_label_by_name_is_kept() -> None:
    checked = _check({"label": "one", "num_images": 2, "seed": 5})
    assert checked.model_dump(mode="json")["label"] == "one"
    assert (checked.num_images, checked.seed) == (2, 5)


def test_a_label_by_index_is_stored_as_its_name() -> None:
    checked = _check({"label": 2})
    assert checked.label == "two"
    assert checked.model_dump(mode="json")["label"] == "two"


def test_requests_for_different_classes_batch_together() -> None:
    assert batch_key(_check({"label": 0})) == batch_key(_check({"label": "two"}))


def test_an_unknown_name_is_refused_naming_the_classes() -> None:
    error = _error({"label": "five"})
    assert error["type"] == "label_unknown"
    assert "'five'" in error["msg"]
    assert "'zero', 'one', 'two'" in error["msg"] and "0 to 2" in error["msg"]


def test_an_index_out_of_range_is_refused_naming_the_classes() -> None:
    error = _error({"label": 3})
    assert error["type"] == "label_index_out_of_range"
    assert "3" in error["msg"] and "'zero', 'one', 'two'" in error["msg"]


@pytest.mark.parametrize("label", [True, False, 1.0, None, [0], {"name": "one"}])
def test_a_label_is_a_string_or_an_integer_never_coerced(label: Any) -> None:
    assert _error({"label": label})["type"] == "label_type"


def test_a_negative_index_is_refused() -> None:
    assert _error({"label": -1})["type"] == "label_index_negative"


def test_a_name_with_control_characters_is_refused() -> None:
    assert _error({"label": "one\x00"})["type"] == "control_character"


def test_a_digit_looking_name_is_a_name_not_an_index() -> None:
    assert _error({"label": "1"})["type"] == "label_unknown"
    assert checked_input(ModelRuntime.onnx_diffusion, ["0", "1"], {"label": "1"}) == (
        checked_input(ModelRuntime.onnx_diffusion, ["0", "1"], {"label": 1})
    )


@pytest.mark.parametrize(
    ("model_input", "field"),
    [
        ({}, "label"),
        ({"label": "one", "digit": 1}, "digit"),
        ({"label": "one", "num_images": 17}, "num_images"),
        ({"label": "one", "num_images": True}, "num_images"),
        ({"label": "one", "num_inference_steps": 201}, "num_inference_steps"),
        ({"label": "one", "scheduler": "euler"}, "scheduler"),
        ({"label": "one", "seed": "7"}, "seed"),
    ],
)
def test_the_other_fields_are_bounded_and_strict(model_input: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _check(model_input)
    assert field in [error["loc"][0] for error in caught.value.errors()]


def test_many_classes_are_listed_in_part() -> None:
    classes = [f"class-{index}" for index in range(50)]
    with pytest.raises(ValidationError, match="'class-19' and 30 more") as caught:
        with_class_name(LabeledImagesInput(label="x"), classes)
    assert "class-20" not in str(caught.value)


def test_entries_without_classes_keep_their_runtime_input() -> None:
    assert input_model_for(ModelRuntime.onnx_diffusion, None) is DigitsInput
    assert input_model_for(ModelRuntime.diffusers, None) is TextToImageInput
    assert input_model_for(ModelRuntime.onnx_diffusion, CLASSES) is LabeledImagesInput
    checked = checked_input(ModelRuntime.onnx_diffusion, None, {"digit": 4})
    assert isinstance(checked, DigitsInput) and checked.digit == 4
    with pytest.raises(ValueError, match="has no classes"):
        input_model_for(ModelRuntime.diffusers, CLASSES)


def test_classes_named_by_numbers_take_the_number_as_the_name_not_an_index() -> None:
    """Folders 1, 2, 3: `label: 1` draws class "1", never the class at index 1 ("2")."""
    numbered = ["1", "2", "3"]
    schema, examples = labeled_schema(numbered, 8)
    assert {"type": "integer", "enum": [1, 2, 3]} in schema["properties"]["label"]["anyOf"]
    for value, name in ((1, "1"), ("3", "3")):
        checked = checked_input(ModelRuntime.onnx_diffusion, numbered, {"label": value})
        assert isinstance(checked, LabeledImagesInput) and checked.label == name
    with pytest.raises(ValidationError, match="not a class"):
        checked_input(ModelRuntime.onnx_diffusion, numbered, {"label": 0})
    for example in examples:
        checked_input(ModelRuntime.onnx_diffusion, numbered, example)
