"""Text a request may store: control characters are refused, NUL first of all (PostgreSQL
cannot hold it in a text column, and a JSON column refuses its escape too).

Mark a `str` with `ONE_LINE` (names, emails, URLs, identifiers) or `MULTILINE` (prompts and
descriptions, which may hold tabs and line breaks), last in its `Annotated`, after any
`StringConstraints`, so length errors keep their own messages. Lone surrogates, which no
encoding can store, are refused with them.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# C0 and C1 controls, DEL, and surrogates: as a class, valid in Python's re and in ECMA-262.
_REFUSED = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"
_REFUSED_BUT_WHITESPACE = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff"


class PlainText:
    """`Annotated` metadata: refuse the characters of the regex class `refused`, and publish the
    pattern of what is accepted in the JSON Schema."""

    def __init__(self, refused: str) -> None:
        self.pattern = f"^[^{refused}]*$"
        self._found = re.compile(f"[{refused}]")

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = self.pattern
        return json_schema

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
