"""Search-index rows for a resource: each parameter's values in its table's form.

    token      (system, code, text)   Coding and CodeableConcept codings, Identifier and
                                      ContactPoint (system, value), code/boolean primitives;
                                      `text` is the normalised display or CodeableConcept.text
    string     (value, exact)         normalised for the default starts-with match, and as written
    date       [start, end)           the value's own precision as a UTC interval; a Period
                                      spans start..end, open ends reach the min/max instant
    number     value
    quantity   (value, system, code, unit)   Quantity and its kinds; Money as ISO 4217
    reference  (target_type, target_id, url) literal references; absolute and canonical URLs
                                      keep `url`, and a trailing Type/id is parsed too
    uri        value

Example: Observation {code: {coding: [{system: http://loinc.org, code: 2093-3}]}} gives the
token row (Observation, code, http://loinc.org, 2093-3, NULL). Rows describe the current
version only; an update replaces them and a delete removes them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .errors import InvalidRequest
from .instant import parse_interval
from .searchparams import ON_RESOURCE_TABLE, Registry

MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ISO_4217 = "urn:iso:std:iso:4217"

Rows = dict[str, list[dict[str, Any]]]


def normalise(text: str) -> str:
    """Case- and accent-insensitive form for string search (Müller -> muller)."""
    if text.isascii():
        return " ".join(text.casefold().split())[:255]
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())[:255]


class Indexer:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def rows(self, resource: dict[str, Any]) -> Rows:
        type_ = resource["resourceType"]
        out: Rows = {}
        keys = resource.keys()
        for code, param in self.registry.params(type_).items():
            if code in ON_RESOURCE_TABLE or (
                param.roots is not None and keys.isdisjoint(param.roots)
            ):
                continue
            values = param.extract(resource)
            if not values:
                continue
            convert = _CONVERTERS[param.type]
            bucket = out.setdefault(param.type, [])
            seen = set()
            for value in values:
                for row in convert(value):
                    key = tuple(row.values())
                    if key not in seen:
                        seen.add(key)
                        bucket.append({"type": type_, "param": code, **row})
        return out


def _short(value: Any, size: int = 255) -> str | None:
    return None if value is None else str(value)[:size]


def _tokens(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "coding" in value or ("text" in value and "value" not in value):
            for coding in value.get("coding", []):
                if isinstance(coding, dict):
                    yield from _tokens(coding)
            if isinstance(value.get("text"), str):
                yield {"system": None, "code": None, "text": normalise(value["text"])}
        elif "code" in value:  # Coding (and Quantity used as a token)
            display = value.get("display")
            yield {
                "system": _short(value.get("system")),
                "code": _short(value.get("code")),
                "text": normalise(display) if isinstance(display, str) else None,
            }
        elif "value" in value:  # Identifier, ContactPoint
            kind = value.get("type")
            text = kind.get("text") if isinstance(kind, dict) else None
            yield {
                "system": _short(value.get("system")),
                "code": _short(value.get("value")),
                "text": normalise(text) if isinstance(text, str) else None,
            }
    elif isinstance(value, bool):
        yield {"system": None, "code": "true" if value else "false", "text": None}
    elif isinstance(value, str | int | Decimal):
        yield {"system": None, "code": _short(value), "text": None}


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _strings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, str):
        yield {"value": normalise(value), "exact": value[:255]}
    elif isinstance(value, dict):
        parts = _NAME_PARTS if ("family" in value or "given" in value) else _ADDRESS_PARTS
        for part in parts:
            item = value.get(part)
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str):
                    yield {"value": normalise(text), "exact": text[:255]}


def _dates(value: Any) -> Iterator[dict[str, Any]]:
    try:
        if isinstance(value, str):
            start, end = parse_interval(value)
            yield {"start": start, "end": end}
        elif isinstance(value, dict) and ("start" in value or "end" in value):
            start = parse_interval(value["start"])[0] if value.get("start") else MIN_INSTANT
            end = parse_interval(value["end"])[1] if value.get("end") else MAX_INSTANT
            yield {"start": start, "end": end}
        elif isinstance(value, dict) and "event" in value:  # Timing
            for event in value["event"]:
                yield from _dates(event)
    except InvalidRequest:
        return  # e.g. a time-only value: not a point in time, nothing to index


def _numbers(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        yield {"value": float(value)}


def _quantities(value: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float | Decimal):
        return
    if "currency" in value:
        yield {
            "value": float(value["value"]),
            "system": _ISO_4217,
            "code": value["currency"],
            "unit": None,
        }
        return
    yield {
        "value": float(value["value"]),
        "system": _short(value.get("system")),
        "code": _short(value.get("code")),
        "unit": _short(value.get("unit")),
    }


def _references(value: Any) -> Iterator[dict[str, Any]]:
    ref = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(ref, str) or ref.startswith("#"):
        return
    m = _REFERENCE.search(ref.split("|")[0])
    local = m is not None and not ref.startswith(("http:", "https:", "urn:"))
    yield {
        "target_type": m.group(1) if m else None,
        "target_id": m.group(2) if m else None,
        "url": None if local else ref[:512],
    }


def _uris(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, str):
        yield {"value": value[:512]}


_CONVERTERS = {
    "token": _tokens,
    "string": _strings,
    "date": _dates,
    "number": _numbers,
    "quantity": _quantities,
    "reference": _references,
    "uri": _uris,
}
