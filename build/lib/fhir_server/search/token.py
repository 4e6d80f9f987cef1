"""Token matching: code, system|code, |code, system|, and :text / :not (R4B search 3.1.1.4.5)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_

from ..errors import InvalidRequest
from ..indexing import normalise
from .values import like_prefix, split_escaped

MODIFIERS = {"", "text", "not", "missing"}


def match(t: Table, value: str, modifier: str, name: str) -> Any:
    if modifier == "text":
        return t.c.text.like(like_prefix(normalise(value)) + "%", escape="\\")
    parts = split_escaped(value)
    if len(parts) == 1:
        return t.c.code == parts[0]
    if len(parts) != 2:
        raise InvalidRequest(f"Invalid token for {name}: at most one unescaped |", (name,))
    system, code = parts
    if not system and not code:
        raise InvalidRequest(f"Invalid token for {name}: empty", (name,))
    if not system:
        return and_(t.c.system.is_(None), t.c.code == code)
    if not code:
        return t.c.system == system
    return and_(t.c.system == system, t.c.code == code)
