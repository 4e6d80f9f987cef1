"""Date matching on [start, end) intervals with the R4B prefixes (search 3.1.1.4.2-3).

The search value's own precision makes it a range too (2020-03 is the whole month):
eq   the search range contains the value's range        ne  not eq
gt   the value's range reaches above the search range    lt  ... below it
ge   gt or eq                                            le  lt or eq
sa   the value starts after the search range ends        eb  it ends before the range starts
ap   the ranges overlap once the search range is widened by 10 % of its distance from now
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, not_, or_

from ..instant import parse_interval
from .values import prefixed

MODIFIERS = {"", "missing"}


def interval_match(start: Any, end: Any, value: str, name: str) -> Any:
    prefix, text = prefixed(value)
    lo, hi = parse_interval(text, name)
    within = and_(start >= lo, end <= hi)
    if prefix == "ap":
        slack = abs(datetime.now(UTC) - lo) / 10
        return and_(start < hi + slack, end > lo - slack)
    return {
        "eq": within,
        "ne": not_(within),
        "gt": end > hi,
        "lt": start < lo,
        "ge": or_(end > hi, within),
        "le": or_(start < lo, within),
        "sa": start >= hi,
        "eb": end <= lo,
    }[prefix]


def match(t: Table, value: str, modifier: str, name: str) -> Any:
    return interval_match(t.c.start, t.c.end, value, name)
