"""The Try it form from an input JSON Schema: which widget each property gets, with what bounds
and first value, and the input the widgets' values make (bad JSON refused with the field)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.schema_form import SchemaFormError, Widget, collect, fields

# Shaped as the platform's generators publish theirs (pydantic's JSON Schema: optional fields are
# unions with null), plus the types a hand-written schema may use.
SCHEMA = {
    "type": "object",
    "required": ["digit", "prompt"],
    "properties": {
        "digit": {"type": "integer", "minimum": 0, "maximum": 9, "title": "Digit"},
        "guidance_scale": {"type": "number", "minimum": 0, "maximum": 30, "default": 7.5},
        "seed": {
            "anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "null"}],
            "default": None,
            "title": "Seed",
        },
        "scheduler": {
            "anyOf": [{"type": "string", "enum": ["ddpm", "ddim"]}, {"type": "null"}],
            "default": None,
        },
        "label": {"anyOf": [{"type": "string", "enum": ["cat", "dog"]}, {"type": "integer"}]},
        "grayscale": {"type": "boolean", "default": True},
        "prompt": {"type": "string", "maxLength": 2000},
        "style": {"type": "string", "maxLength": 40},
        "features": {"type": "array", "default": [[0.5, 0.5]]},
    },
}
EXAMPLE = {"digit": 7, "seed": 42, "features": [[1, 2]]}


def test_each_property_gets_its_widget_with_bounds_and_first_value() -> None:
    by_name = {field.name: field for field in fields(SCHEMA, EXAMPLE)}

    digit = by_name["digit"]
    assert (digit.widget, digit.label, digit.value, digit.minimum, digit.maximum) == (
        Widget.integer,
        "Digit",
        7,
        0,
        9,
    )
    assert digit.required
    assert (by_name["guidance_scale"].widget, by_name["guidance_scale"].value) == (
        Widget.number,
        7.5,
    )
    seed = by_name["seed"]
    assert (seed.widget, seed.value, seed.maximum, seed.required) == (
        Widget.integer,
        42,
        100,
        False,
    )
    assert by_name["scheduler"].widget is Widget.choice
    assert (by_name["scheduler"].options, by_name["scheduler"].value) == (("ddpm", "ddim"), None)
    assert by_name["label"].options == ("cat", "dog")
    assert (by_name["grayscale"].widget, by_name["grayscale"].value) == (Widget.checkbox, True)
    assert by_name["prompt"].widget is Widget.long_text
    assert by_name["style"].widget is Widget.text
    assert (by_name["features"].widget, by_name["features"].value) == (Widget.json, "[[1, 2]]")


def test_the_values_make_the_input_leaving_out_what_is_empty() -> None:
    form = fields(SCHEMA, EXAMPLE)
    values = {
        "digit": 3,
        "guidance_scale": 2.0,
        "seed": None,
        "scheduler": "ddim",
        "label": "dog",
        "grayscale": False,
        "prompt": "a seven",
        "style": "  ",
        "features": "[[0.1, 0.2]]",
    }

    assert collect(form, values) == {
        "digit": 3,
        "guidance_scale": 2.0,
        "scheduler": "ddim",
        "label": "dog",
        "grayscale": False,
        "prompt": "a seven",
        "features": [[0.1, 0.2]],
    }


def test_bad_json_and_missing_required_values_name_the_fields_to_fix() -> None:
    form = fields(SCHEMA, EXAMPLE)

    with pytest.raises(SchemaFormError) as refused:
        collect(form, {"digit": 1, "prompt": "", "features": "[[0.1, 0.2]"})

    assert "prompt: required" in str(refused.value)
    assert "features: not valid JSON" in str(refused.value)


def _digits_form() -> None:
    import streamlit as st

    from dashboard import schema_form

    schema = {
        "type": "object",
        "required": ["digit"],
        "properties": {
            "digit": {"type": "integer", "minimum": 0, "maximum": 9, "title": "Digit"},
            "scheduler": {
                "anyOf": [{"type": "string", "enum": ["ddpm", "ddim"]}, {"type": "null"}],
                "title": "Scheduler",
            },
            "features": {"type": "array", "title": "Features"},
        },
    }
    form = schema_form.fields(schema, {"digit": 7, "features": [[1]]})
    with st.form("try"):
        values = schema_form.render(form, key="try")
        st.form_submit_button("Generate")
    st.json(schema_form.collect(form, values))


def test_the_rendered_widgets_hold_the_first_values() -> None:
    app = AppTest.from_function(_digits_form).run()

    assert not app.exception
    assert app.number_input[0].label == "Digit"
    assert (app.number_input[0].value, app.number_input[0].min, app.number_input[0].max) == (
        7,
        0,
        9,
    )
    assert app.selectbox[0].value is None
    assert app.text_area[0].value == "[[1]]"
    app.number_input[0].set_value(4)
    app.selectbox[0].set_value("ddim")
    app.button[0].click().run()
    assert app.json[0].value == '{"digit": 4, "scheduler": "ddim", "features": [[1]]}'


def test_an_example_a_widget_cannot_hold_is_kept_as_json_or_within_bounds() -> None:
    """A model's example outside its schema's bounds, or of another type, must not break the
    form (a number input raises on a value outside its bounds)."""
    schema = {
        "type": "object",
        "properties": {
            "steps": {"type": "integer", "minimum": 1, "maximum": 50},
            "scale": {"type": "number", "maximum": 0},
            "digit": {"type": "integer"},
            "flag": {"type": "boolean"},
            "name": {"type": "string"},
        },
        "required": ["steps"],
    }
    example = {"steps": 500, "scale": 3.5, "digit": 2.5, "flag": "yes", "name": 7}

    made = {field.name: field for field in fields(schema, example)}

    assert (made["steps"].widget, made["steps"].value) == (Widget.integer, 50)
    assert (made["scale"].widget, made["scale"].value) == (Widget.number, 0)
    for name, text in (("digit", "2.5"), ("flag", '"yes"'), ("name", "7")):
        assert (made[name].widget, made[name].value) == (Widget.json, text)
