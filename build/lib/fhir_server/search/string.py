"""String matching: starts-with, case- and accent-insensitive; :exact and :contains."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table

from ..indexing import normalise
from .values import like_prefix

MODIFIERS = {"", "exact", "contains", "missing"}


def match(t: Table, value: str, modifier: str, name: str) -> Any:
    if modifier == "exact":
        return t.c.exact == value
    pattern = like_prefix(normalise(value))
    if modifier == "contains":
        return t.c.value.like(f"%{pattern}%", escape="\\")
    return t.c.value.like(f"{pattern}%", escape="\\")
