"""JSON in and out without changing what the client sent.

FHIR decimals carry their precision in their text ("1.50" is not "1.5"), and Python floats
would lose it. Numbers with a fraction or exponent are parsed into `JsonDecimal`, which keeps
the original text and is written back verbatim; everything else goes through orjson.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


class JsonDecimal(Decimal):
    """A Decimal that remembers the exact JSON text it was parsed from."""

    raw: str

    def __new__(cls, text: str) -> JsonDecimal:
        self = super().__new__(cls, text)
        self.raw = text
        return self


_decoder = json.JSONDecoder(parse_float=JsonDecimal)


class InvalidJson(ValueError):
    """The bytes are not a JSON document (or not UTF-8)."""


def loads(data: bytes | str) -> Any:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _decoder.decode(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The position helps the client; the content itself is never echoed.
        raise InvalidJson(f"Body is not valid JSON ({_describe(exc)})") from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "not UTF-8"


def _default(obj: object) -> object:
    if isinstance(obj, JsonDecimal):
        return orjson.Fragment(obj.raw)
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"Not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, *, pretty: bool = False) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(obj, default=_default, option=option)


def raw(data: bytes) -> orjson.Fragment:
    """Embed already serialised JSON (a stored resource) without parsing it again."""
    return orjson.Fragment(data)
