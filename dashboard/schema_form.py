"""A form from a model's input JSON Schema: one widget per property, and the input they make.

`fields` maps the schema to widgets (pure, so tests check it without Streamlit), `render` draws
them inside a form, and `collect` turns what they hold into the request's input, refusing JSON
that does not parse with which field to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import streamlit as st

# Strings allowed more characters than this get a text area (a prompt), not a one-line input.
LONG_TEXT_CHARACTERS = 200


class Widget(StrEnum):
    integer = "integer"
    number = "number"
    choice = "choice"
    checkbox = "checkbox"
    text = "text"
    long_text = "long_text"
    json = "json"


@dataclass(frozen=True)
class Field:
    """One property of the input as a widget: its bounds, choices and first value."""

    name: str
    label: str
    widget: Widget
    value: Any = None
    help: str | None = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    options: tuple[Any, ...] = ()


class SchemaFormError(ValueError):
    """What the form holds is not an input; the message says which field to fix."""


def fields(schema: dict[str, Any], example: dict[str, Any] | None = None) -> list[Field]:
    """The widgets for an object schema's properties, first values from `example` (the model's
    example input) where it has one, else the property's default."""
    example = example or {}
    required = set(schema.get("required") or [])
    return [
        _field(name, spec, name in required, example.get(name))
        for name, spec in (schema.get("properties") or {}).items()
    ]


def _field(name: str, spec: dict[str, Any], required: bool, example: Any) -> Field:
    branches = [branch for branch in spec.get("anyOf", [spec]) if branch.get("type") != "null"]
    chosen = next((branch for branch in branches if "enum" in branch), _branch_or(branches))
    if len(branches) > 1 and "enum" not in chosen:
        chosen = {"type": "object"}  # a union a single widget cannot hold: typed as JSON
    value = example if example is not None else spec.get("default", chosen.get("default"))
    base = Field(
        name=name,
        label=spec.get("title") or name,
        widget=Widget.json,
        value=value,
        help=spec.get("description"),
        required=required,
    )
    kind = chosen.get("type")
    if "enum" in chosen:
        return replace(base, widget=Widget.choice, options=tuple(chosen["enum"]))
    if kind in ("integer", "number"):
        minimum, maximum = _number(chosen.get("minimum")), _number(chosen.get("maximum"))
        if value is None and required:
            value = minimum if minimum is not None else 0
        if value is not None and _number(value, whole=kind == "integer") is None:
            return replace(base, value=_json_text(value))  # an example the widget cannot hold
        if value is not None and minimum is not None:  # a number input refuses values
            value = max(value, minimum)  # outside its bounds
        if value is not None and maximum is not None:
            value = min(value, maximum)
        widget = Widget.integer if kind == "integer" else Widget.number
        return replace(base, widget=widget, value=value, minimum=minimum, maximum=maximum)
    if kind == "boolean" and isinstance(value, bool | None):
        return replace(base, widget=Widget.checkbox, value=bool(value))
    if kind == "string" and isinstance(value, str | None):
        long = (chosen.get("maxLength") or 0) > LONG_TEXT_CHARACTERS
        return replace(base, widget=Widget.long_text if long else Widget.text)
    return replace(base, value=_json_text(value))


def _number(value: Any, *, whole: bool = False) -> int | float | None:
    """`value` if it is a number (a whole one when `whole`), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if whole and not float(value).is_integer():
        return None
    return int(value) if whole else value


def _branch_or(branches: list[dict[str, Any]]) -> dict[str, Any]:
    """The one non-null branch of a union, or an untyped schema when there is none."""
    return branches[0] if branches else {}


def _json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value)


def render(form_fields: list[Field], key: str) -> dict[str, Any]:
    """Draw each field's widget (inside an `st.form`); what each holds, by field name. Widget keys
    start with `key`, so another model's form starts afresh."""
    return {field.name: _widget(field, f"{key}.{field.name}") for field in form_fields}


def _widget(field: Field, key: str) -> Any:
    placeholder = None if field.required else "left out: the model's default"
    if field.widget in (Widget.integer, Widget.number):
        cast = _whole if field.widget is Widget.integer else _real
        numbers: dict[str, Any] = {
            "min_value": cast(field.minimum),
            "max_value": cast(field.maximum),
            "value": cast(field.value),
            "step": 1 if field.widget is Widget.integer else None,
        }
        return st.number_input(
            field.label, help=field.help, placeholder=placeholder, key=key, **numbers
        )
    if field.widget is Widget.choice:
        options = list(field.options)
        index = options.index(field.value) if field.value in options else None
        if index is None and field.required:
            index = 0
        return st.selectbox(
            field.label, options, index=index, help=field.help, placeholder=placeholder, key=key
        )
    if field.widget is Widget.checkbox:
        return st.checkbox(field.label, value=field.value, help=field.help, key=key)
    text = st.text_area if field.widget in (Widget.long_text, Widget.json) else st.text_input
    hint = "JSON" if field.widget is Widget.json else placeholder
    return text(field.label, value=field.value or "", help=field.help, placeholder=hint, key=key)


def _whole(value: Any) -> int | None:
    return None if value is None else int(value)


def _real(value: Any) -> float | None:
    return None if value is None else float(value)


def collect(form_fields: list[Field], values: dict[str, Any]) -> dict[str, Any]:
    """The input the widgets' `values` make: fields left empty are left out (the model's default
    applies); JSON fields are parsed. SchemaFormError names every field to fix."""
    model_input: dict[str, Any] = {}
    problems = []
    for field in form_fields:
        value = values.get(field.name)
        if field.widget is Widget.json and isinstance(value, str) and value.strip():
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                problems.append(f"{field.label}: not valid JSON ({exc.msg} at line {exc.lineno})")
                continue
        if value is None or (isinstance(value, str) and not value.strip()):
            if field.required:
                problems.append(f"{field.label}: required")
            continue
        if field.widget is Widget.integer:
            value = int(value)
        model_input[field.name] = value
    if problems:
        raise SchemaFormError("; ".join(problems))
    return model_input
