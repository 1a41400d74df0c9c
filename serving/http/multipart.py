"""Multipart uploads streamed to disk: one file under a byte limit, and a few short text fields.

Starlette's form parser spools a whole file before the route sees it. This one counts bytes as
they arrive and refuses the upload with 413 the moment it passes the limit, so an oversized body is
never read to its end, and a body that announces its size is refused before any of it is read.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from goshen.errors import InvalidInputError, PayloadTooLargeError

if TYPE_CHECKING:  # python-multipart declares its callback types for type checkers only
    from python_multipart.multipart import MultipartCallbacks

Form = TypeVar("Form", bound=BaseModel)
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 16
# Room for boundaries, part headers and the text fields around the file.
FORM_OVERHEAD_BYTES = MAX_FIELDS * MAX_FIELD_BYTES


@dataclass(frozen=True)
class MultipartUpload:
    """The file part, written to `destination` (None if the body had none), and the text fields."""

    file: Path | None
    fields: dict[str, str]

    def validated(self, schema: type[Form], what: str) -> tuple[Form, Path]:
        """The text fields as `schema` (422 naming each bad field, as JSON bodies get) and the
        file, which must be there (`what` it should be, for the 422 when it is not)."""
        try:
            form = schema.model_validate(self.fields)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            ) from None
        if self.file is None:
            raise InvalidInputError(f"attach the {what} as the multipart part 'file'", field="file")
        return form, self.file


def multipart_form(file_description: str, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body with `receive_upload`: a multipart form
    of the part `file` and the text `fields` (JSON Schema of each), `file` and `name` required."""
    file = {"type": "string", "format": "binary", "description": file_description}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "name"],
                        "properties": {"file": file, **fields},
                        "additionalProperties": False,
                    }
                }
            },
        }
    }


async def receive_upload(
    request: Request, destination: Path, *, file_field: str, max_file_bytes: int, limit_name: str
) -> MultipartUpload:
    """Stream a multipart/form-data body: part `file_field` to `destination`, the rest as text.

    `limit_name` is the setting behind `max_file_bytes`, named in the 413 answer.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(
            415, f"send the upload as multipart/form-data with the file in the part {file_field!r}"
        )
    max_body = max_file_bytes + FORM_OVERHEAD_BYTES
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > max_body:
        raise _too_large(max_file_bytes, limit_name)
    with destination.open("wb") as out:
        receiver = _Receiver(out, file_field, max_file_bytes, limit_name)
        parser = MultipartParser(options[b"boundary"], receiver.callbacks())
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_body:
                    raise _too_large(max_file_bytes, limit_name)
                parser.write(chunk)
                if receiver.pending:
                    await run_in_threadpool(receiver.flush)
            parser.finalize()
            receiver.flush()
        except MultipartParseError as exc:
            raise InvalidInputError(
                f"the multipart body is malformed: {exc}", field="file"
            ) from None
    if not receiver.complete:
        raise InvalidInputError(
            "the multipart body ended before its closing boundary", field="file"
        )
    return MultipartUpload(destination if receiver.has_file else None, receiver.fields)


@asynccontextmanager
async def received_upload(
    request: Request,
    schema: type[Form],
    what: str,
    *,
    filename: str,
    max_file_bytes: int,
    limit_name: str,
) -> AsyncIterator[tuple[Form, Path]]:
    """The validated text fields (as `schema`) and the file (part `file`, saved as `filename`)
    of an upload, in a temporary folder removed when the block ends, whatever happens in it."""
    with tempfile.TemporaryDirectory(prefix=f"goshen-{what}-") as workdir:
        upload = await receive_upload(
            request,
            Path(workdir) / filename,
            file_field="file",
            max_file_bytes=max_file_bytes,
            limit_name=limit_name,
        )
        yield upload.validated(schema, what)


def _too_large(max_file_bytes: int, limit_name: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the upload is larger than {max_file_bytes} bytes, over the limit "
        f"{limit_name}={max_file_bytes}"
    )


class _Receiver:
    """Callbacks for python-multipart's parser; file bytes wait in `pending` for `flush`."""

    def __init__(self, out: BinaryIO, file_field: str, max_file_bytes: int, limit_name: str):
        self.fields: dict[str, str] = {}
        self.pending: list[bytes] = []
        self.has_file = False
        self.complete = False
        self._out = out
        self._file_field = file_field
        self._max_file_bytes = max_file_bytes
        self._limit_name = limit_name
        self._file_bytes = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_name_part,
            "on_header_value": self._header_value_part,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def flush(self) -> None:
        self._out.write(b"".join(self.pending))
        self.pending.clear()

    @property
    def _in_file(self) -> bool:
        return self._name == self._file_field

    def _part_begin(self) -> None:
        self._disposition = b""
        self._name = ""
        self._value.clear()

    def _header_name_part(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise InvalidInputError(
                "a multipart part has no name in its Content-Disposition", field="file"
            )
        self._name = name.decode("utf-8", errors="replace")
        if self._in_file:
            if self.has_file:
                raise InvalidInputError(
                    f"send one {self._file_field!r} part", field=self._file_field
                )
            self.has_file = True
        elif b"filename" in options:
            raise InvalidInputError(
                f"unexpected file part {self._name[:100]!r}; send the file as {self._file_field!r}",
                field=self._name[:100],
            )
        elif self._name in self.fields or len(self.fields) >= MAX_FIELDS:
            raise InvalidInputError(
                f"field {self._name[:100]!r} is repeated or one too many", field=self._name[:100]
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._file_bytes += end - start
            if self._file_bytes > self._max_file_bytes:
                raise _too_large(self._max_file_bytes, self._limit_name)
            self.pending.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidInputError(
                f"field {self._name[:100]!r} is longer than {MAX_FIELD_BYTES} bytes",
                field=self._name[:100],
            )

    def _part_end(self) -> None:
        if self._in_file:
            return
        try:
            self.fields[self._name] = self._value.decode()
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"field {self._name[:100]!r} is not UTF-8 text", field=self._name[:100]
            ) from None

    def _end(self) -> None:
        self.complete = True
