"""URI matching: exact by default; :below (the value is under the given URL) and :above."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, literal

from .values import like_prefix

MODIFIERS = {"", "below", "above", "missing"}


def match(t: Table, value: str, modifier: str, name: str) -> Any:
    if modifier == "below":
        return t.c.value.like(like_prefix(value) + "%", escape="\\")
    if modifier == "above":
        return literal(value).like(t.c.value + "%")
    return t.c.value == value
