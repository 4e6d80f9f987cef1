"""Number and quantity matching (R4B search 3.1.1.4.1 and 3.1.1.4.4).

`eq100` means [99.5, 100.5): a value is as precise as it is written. The other prefixes
compare against the exact value; `ap` allows 10 %. A quantity adds `|system|code`, where
a code without a system also matches the human unit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Table, and_, not_, or_

from ..errors import InvalidRequest
from .values import number, prefixed, split_escaped

MODIFIERS = {"", "missing"}


def compare(column: Any, value: str, name: str) -> Any:
    prefix, text = prefixed(value)
    exact, half = number(text, name)
    v = float(exact)
    if prefix in ("eq", "ne"):
        within = and_(column >= float(exact - half), column < float(exact + half))
        return within if prefix == "eq" else not_(within)
    if prefix == "ap":
        slack = abs(exact) * Decimal("0.1")
        return and_(column >= float(exact - slack), column <= float(exact + slack))
    return {
        "gt": column > v,
        "sa": column > v,
        "lt": column < v,
        "eb": column < v,
        "ge": column >= v,
        "le": column <= v,
    }[prefix]


def match(t: Table, value: str, modifier: str, name: str) -> Any:
    return compare(t.c.value, value, name)


def match_quantity(t: Table, value: str, modifier: str, name: str) -> Any:
    parts = split_escaped(value)
    if len(parts) not in (1, 3):
        raise InvalidRequest(f"Quantity for {name} is number or number|system|code", (name,))
    clause = compare(t.c.value, parts[0], name)
    if len(parts) == 3:
        system, code = parts[1], parts[2]
        if system:
            clause = and_(clause, t.c.system == system)
        if code:
            clause = and_(
                clause, t.c.code == code if system else or_(t.c.code == code, t.c.unit == code)
            )
    return clause
