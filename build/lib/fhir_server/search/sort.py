"""`_sort` and the keyset that pages through a sorted result (R4B search 3.1.1.6.1).

A parameter with several values sorts by its lowest value ascending and its highest
descending; resources without a value come last either way. Each key becomes two ORDER BY
components, (has no value) then (the value), and the resource pk ends every order, so the
order is total and a page can start strictly after the previous page's last row: no OFFSET,
and rows written meanwhile do not shift what later pages contain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, false, func, literal, or_, select

from ..errors import InvalidRequest
from ..indexing import MIN_INSTANT
from ..schema import INDEX_TABLES, UtcDateTime
from ..searchparams import Registry

# parameter type -> (column sorted ascending, column sorted descending, neutral value)
_COLUMNS: dict[str, tuple[str, str, Any]] = {
    "date": ("start", "end", MIN_INSTANT),
    "string": ("value", "value", ""),
    "number": ("value", "value", 0.0),
    "quantity": ("value", "value", 0.0),
    "token": ("code", "code", ""),
    "uri": ("value", "value", ""),
}


@dataclass(frozen=True)
class Component:
    expr: Any
    desc: bool
    kind: str  # how its value travels in a paging token: int, float, str, date
    join: Any = None  # a per-resource aggregate to LEFT JOIN on resource_pk


def joins(parts: list[Component]) -> list[Any]:
    return [p.join for p in parts if p.join is not None]


def parse_sort(value: str, type_: str, registry: Registry) -> list[tuple[str, bool]]:
    keys = []
    for item in value.split(","):
        desc = item.startswith("-")
        code = item[1:] if desc else item
        if code not in ("_id", "_lastUpdated"):
            param = registry.get(type_, code)
            if param is None or param.type not in _COLUMNS:
                raise InvalidRequest(f"Cannot sort {type_} by {code[:64]!r}", ("_sort",))
        keys.append((code, desc))
    if not keys or len(keys) > 4:
        raise InvalidRequest("_sort takes one to four keys", ("_sort",))
    return keys


def components(
    keys: list[tuple[str, bool]], res: Any, type_: str, registry: Registry
) -> list[Component]:
    out: list[Component] = []
    for code, desc in keys:
        if code == "_id":
            out.append(Component(res.c.id, desc, "str"))
            continue
        if code == "_lastUpdated":
            out.append(Component(res.c.last_updated, desc, "date"))
            continue
        param = registry.get(type_, code)
        assert param is not None
        table = INDEX_TABLES[param.type].alias()
        asc_col, desc_col, neutral = _COLUMNS[param.type]
        column = table.c[desc_col if desc else asc_col]
        pick = func.max(column) if desc else func.min(column)
        # One aggregate per resource, joined once: a correlated subquery per candidate row
        # (and per keyset comparison) made SQLite rescan the parameter's rows each time.
        keyed = (
            select(table.c.resource_pk, pick.label("v"))
            .where(table.c.type == type_, table.c.param == code)
            .group_by(table.c.resource_pk)
            .subquery()
        )
        value = keyed.c.v
        kind = {"date": "date", "number": "float", "quantity": "float"}.get(param.type, "str")
        typed_neutral = literal(neutral, UtcDateTime) if kind == "date" else literal(neutral)
        out.append(Component(case((value.is_(None), 1), else_=0), False, "int", keyed))
        out.append(Component(func.coalesce(value, typed_neutral), desc, kind))
    return out


def order_by(parts: list[Component]) -> list[Any]:
    """ORDER BY terms; the caller ends them with the resource pk."""
    return [c.expr.desc() if c.desc else c.expr.asc() for c in parts]


def after(parts: list[Component], pk: Any, values: list[Any], last_pk: int) -> Any:
    """Rows strictly after (values, last_pk) in the order above."""
    terms = []
    for i, part in enumerate(parts):
        earlier_equal = [p.expr == v for p, v in zip(parts[:i], values[:i], strict=True)]
        beyond = part.expr < values[i] if part.desc else part.expr > values[i]
        terms.append(and_(*earlier_equal, beyond))
    equal = [p.expr == v for p, v in zip(parts, values, strict=True)]
    terms.append(and_(*equal, pk > last_pk))
    return or_(*terms) if terms else false()


def dump(parts: list[Component], values: tuple[Any, ...]) -> list[Any]:
    return [v.isoformat() if p.kind == "date" else v for p, v in zip(parts, values, strict=True)]


def load(parts: list[Component], values: list[Any]) -> list[Any]:
    if len(values) != len(parts):
        raise InvalidRequest("Invalid paging link", ("_page",))
    out = []
    for part, value in zip(parts, values, strict=True):
        if part.kind == "date":
            parsed = datetime.fromisoformat(value)
            out.append(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
        else:
            out.append(value)
    return out
