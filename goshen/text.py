"""Text a request may store: control characters are refused, NUL first of all (PostgreSQL
cannot hold it in a text column, and a JSON column refuses its escape too).

Mark a `str` with `ONE_LINE` (names, emails, URLs, identifiers) or `MULTILINE` (prompts and
descriptions, which may hold tabs and line breaks), last in its `Annotated`, after any
`StringConstraints`. The check runs on the text as sent, before whitespace is stripped. Lone
surrogates, which no encoding can store, are refused with them.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# C0 and C1 controls and DEL, as a class valid in Python's re and in ECMA-262.
_REFUSED = r"\x00-\x1f\x7f-\x9f"
_REFUSED_BUT_WHITESPACE = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
# Lone surrogates are refused too, but left out of the published pattern: they are no characters
# a JSON Schema string holds, and schema tools (schemathesis among them) drop a class naming them.
_SURROGATES = r"\ud800-\udfff"


class PlainText:
    """`Annotated` metadata: refuse the characters of the regex class `refused`, and publish the
    pattern of what is accepted in the JSON Schema."""

    def __init__(self, refused: str) -> None:
        self.pattern = f"^[^{refused}]*$"
        self._found = re.compile(f"[{refused}{_SURROGATES}]")

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # Before the string's own constraints: stripping must not hide a control character
        # that the published pattern refuses.
        return core_schema.no_info_before_validator_function(self._check_text, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = self.pattern
        return json_schema

    def _check_text(self, value: Any) -> Any:
        return self.check(value) if isinstance(value, str) else value

    def check(self, value: str) -> str:
        found = self._found.search(value)
        if found is not None:
            raise PydanticCustomError(
                "control_character",
                "must not hold control characters: found {character} at character {position}; "
                "remove it",
                {"character": f"U+{ord(found.group()):04X}", "position": found.start()},
            )
        return value


ONE_LINE = PlainText(_REFUSED)
MULTILINE = PlainText(_REFUSED_BUT_WHITESPACE)
