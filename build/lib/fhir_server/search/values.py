"""Parsing search values: escapes, comma lists, prefixes, implicit number precision."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from ..errors import InvalidRequest

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MAX_OR_VALUES = 100


def parse_count(value: str, max_count: int) -> int:
    """`_count`: a page size, capped at the server's maximum."""
    if not value.isdigit():
        raise InvalidRequest("_count must be a non-negative integer", ("_count",))
    return min(int(value), max_count)


def split_values(raw: str, name: str) -> list[str]:
    """Comma-separated alternatives (OR), honouring the \\, escape (R4B search 3.1.1.5.7)."""
    values, current, escaped = [], [], False
    for ch in raw:
        if escaped:
            current.append(ch if ch in ",$|\\" else "\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            values.append("".join(current))
            current = []
        else:
            current.append(ch)
    values.append("".join(current))
    if len(values) > MAX_OR_VALUES:
        raise InvalidRequest(f"Too many values for {name} (at most {MAX_OR_VALUES})", (name,))
    return values


def split_escaped(value: str, sep: str = "|") -> list[str]:
    """Split on an unescaped separator (token system|code, quantity number|system|code)."""
    parts, current, escaped = [], [], False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def prefixed(value: str) -> tuple[str, str]:
    """(prefix, rest); eq when the value has none."""
    if len(value) > 2 and value[:2] in PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def number(text: str, name: str) -> tuple[Decimal, Decimal]:
    """The value and half a unit of its last significant digit: 100 -> (100, 0.5)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidRequest(f"Invalid number for {name}", (name,)) from None
    if not value.is_finite():
        raise InvalidRequest(f"Invalid number for {name}", (name,))
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return value, Decimal(5).scaleb(exponent - 1)


def like_prefix(text: str) -> str:
    """`text` made safe inside LIKE (escape character \\), for starts-with and contains."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
