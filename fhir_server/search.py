"""Search criteria for the REST core: `_id`, `_lastUpdated` and the result parameters.

This is the subset conditional interactions and the CapabilityStatement rely on; the full
R4B search model (index tables driven by SearchParameter definitions) replaces the criteria
part without changing this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, not_, or_

from .errors import InvalidRequest, Issue
from .instant import parse_interval
from .schema import resource

SEARCH_PARAMETERS = {
    "_id": ("token", "Logical id of this artifact", "Resource.id"),
    "_lastUpdated": ("date", "When the resource version last changed", "Resource.meta.lastUpdated"),
}
RESULT_PARAMETERS = {"_count", "_total", "_summary", "_format", "_pretty", "_page"}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MAX_OR_VALUES = 1000


@dataclass
class Criteria:
    """A compiled search: SQL conditions, what was applied, and what was ignored."""

    where: list[Any] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    count: int | None = None
    total: str | None = None
    summary_count: bool = False


def compile_criteria(
    params: list[tuple[str, str]],
    *,
    strict: bool,
    default_count: int,
    max_count: int,
) -> Criteria:
    """Compile a search's multi-dict (repeats mean AND, commas mean OR) into SQL criteria."""
    crit = Criteria()
    for name, value in params:
        base, _, modifier = name.partition(":")
        if base in SEARCH_PARAMETERS and not modifier:
            crit.where.append(_compile(base, value))
            crit.applied.append((name, value))
        elif name == "_count":
            crit.count = _count(value, max_count)
            crit.applied.append((name, value))
        elif name == "_summary" and value == "count":
            crit.summary_count = True
            crit.applied.append((name, value))
        elif name == "_total" and value in {"none", "estimate", "accurate"}:
            crit.total = value
            crit.applied.append((name, value))
        elif name in {"_format", "_pretty", "_page"}:
            continue
        else:
            problem = f"Search parameter {name} is not supported here"
            if strict:
                raise InvalidRequest(problem, (name,), code="not-supported")
            crit.warnings.append(Issue("warning", "not-supported", problem, (name,)))
    if crit.count is None:
        crit.count = default_count
    return crit


def _count(value: str, max_count: int) -> int:
    if not value.isdigit():
        raise InvalidRequest("_count must be a non-negative integer", ("_count",))
    return min(int(value), max_count)


def _compile(name: str, value: str) -> Any:
    values = value.split(",")
    if len(values) > MAX_OR_VALUES:
        raise InvalidRequest(f"Too many values for {name} (at most {MAX_OR_VALUES})", (name,))
    if name == "_id":
        return resource.c.id.in_(values)
    return or_(*(_last_updated(v) for v in values))


def _last_updated(value: str) -> Any:
    prefix = value[:2] if value[:2] in PREFIXES else "eq"
    text = value[2:] if value[:2] in PREFIXES else value
    lo, hi = parse_interval(text, "_lastUpdated")
    col = resource.c.last_updated
    if prefix == "ap":  # approximately: widen the interval by 10 % of its distance from now
        slack = abs(datetime.now(lo.tzinfo) - lo) / 10
        lo, hi = lo - slack, hi + slack
    return {
        "eq": and_(col >= lo, col < hi),
        "ap": and_(col >= lo, col < hi),
        "ne": not_(and_(col >= lo, col < hi)),
        "gt": col >= hi,
        "sa": col >= hi,
        "ge": col >= lo,
        "lt": col < lo,
        "eb": col < lo,
        "le": col < hi,
    }[prefix]
