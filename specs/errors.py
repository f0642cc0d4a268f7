"""Errors of the wire contract: one root, each carrying the response code it maps to.

Decode errors also carry the field and the byte position where decoding failed, counted
from the start of what was handed to the decoder (the frame payload for frames).
"""

from __future__ import annotations


class SpecError(Exception):
    """Root of every error raised by :mod:`specs`."""

    response_code = "30"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DecodeError(SpecError):
    """Bytes that do not decode: ``field`` names where, ``position`` the byte offset."""

    def __init__(self, message: str, *, field: str, position: int,
                 partial: dict[str, str] | None = None) -> None:
        super().__init__(f"{message} (field {field}, byte {position})", field=field)
        self.position = position
        self.partial: dict[str, str] = partial if partial is not None else {}
        """The fields decoded before the fault (MTI included when it decoded), e.g. F41 to
        answer a terminal whose request does not decode."""


class FramingError(DecodeError):
    """A frame that is truncated, too long, too short or badly delimited."""


class EncodeError(SpecError):
    """A message that cannot be encoded: a value that does not fit its field."""


class ValidationError(SpecError):
    """A decoded message that breaks the catalog: missing, unexpected or wrong field."""

    def __init__(self, message: str, *, field: str, response_code: str = "30") -> None:
        super().__init__(f"{message} (field {field})", field=field)
        self.response_code = response_code
