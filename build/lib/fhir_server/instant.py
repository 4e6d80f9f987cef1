"""FHIR date/dateTime/instant values as UTC intervals, and the server's instant format."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from .errors import InvalidRequest

_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def format_instant(value: datetime) -> str:
    """`meta.lastUpdated` as the server writes it: UTC, microseconds, Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_interval(text: str, name: str = "date") -> tuple[datetime, datetime]:
    """[start, end) of a FHIR date, dateTime or instant at its own precision, in UTC.

    A value without a zone is read as UTC (the server's zone), as FHIR leaves it to the server.
    """
    m = _DATE.match(text)
    if not m:
        raise InvalidRequest(f"Invalid date value for {name}", (name,))
    g = m.groupdict()
    try:
        tz = _zone(g["tz"])
        year, month, day = int(g["y"]), int(g["m"] or 1), int(g["d"] or 1)
        if g["m"] is None:
            start = datetime(year, 1, 1, tzinfo=tz)
            end = datetime(year + 1, 1, 1, tzinfo=tz)
        elif g["d"] is None:
            start = datetime(year, month, 1, tzinfo=tz)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
        elif g["H"] is None:
            start = datetime(year, month, day, tzinfo=tz)
            end = start + timedelta(days=1)
        else:
            start = datetime(
                year, month, day, int(g["H"]), int(g["M"]), int(g["S"] or 0), tzinfo=tz
            )
            if g["S"] is None:
                end = start + timedelta(minutes=1)
            elif g["f"]:
                digits = g["f"][1:]
                start = start.replace(microsecond=int(digits[:6].ljust(6, "0")))
                end = start + timedelta(microseconds=10 ** max(0, 6 - len(digits)))
            else:
                end = start + timedelta(seconds=1)
    except ValueError:
        raise InvalidRequest(f"Invalid date value for {name}", (name,)) from None
    return start.astimezone(UTC), end.astimezone(UTC)


def _zone(text: str | None) -> tzinfo:
    if text is None or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))
