"""Reference matching: Type/id, a bare id, our own absolute URLs, other URLs and canonicals."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Table, and_

from ..errors import InvalidRequest
from ..models import is_resource_type

_LOCAL = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def modifiers_ok(modifier: str) -> bool:
    """ "" , missing, or a resource type (:Patient)."""
    return modifier in ("", "missing") or is_resource_type(modifier)


def match(
    t: Table, value: str, modifier: str, name: str, base: str, targets: tuple[str, ...]
) -> Any:
    if value.startswith(base + "/"):
        value = value[len(base) + 1 :]
    if m := _LOCAL.match(value):
        type_, id_ = m.group(1), m.group(2)
        if modifier and modifier != type_:
            raise InvalidRequest(f"{name}:{modifier} does not fit the value's type", (name,))
        return and_(t.c.target_type == type_, t.c.target_id == id_)
    if "/" in value or ":" in value:  # another server's URL, or a canonical
        return t.c.url == value
    if modifier:
        return and_(t.c.target_type == modifier, t.c.target_id == value)
    if len(targets) == 1:
        return and_(t.c.target_type == targets[0], t.c.target_id == value)
    return t.c.target_id == value
