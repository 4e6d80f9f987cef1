"""Token modifiers answered by the terminology layer (R4B search 3.1.1.4.5):

    :in      a coding is in the value set named by its canonical url (`url`, `url|version`)
             or by a literal `ValueSet/id`: its expansion, as `ValueSet/$expand` gives it
    :not-in  the resources with no coding in it (like `:not`, also those with no value)
    :below   `system|code`: the coding is that code or one of its descendants (is-a)
    :above   `system|code`: the coding is that code or one of its ancestors

Each value becomes a set of (system, code) pairs (comma values: their union), matched
against the token rows as `system = s AND code IN (...)` per system, in chunks. A row
without a system (a `code` element, whose system its binding implies) matches by code.
Larger sets than MAX_CODES are refused rather than sent to the database as a giant IN.
Unknown value sets, code systems and codes are 400: the value, not the modifier, is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, and_, false, or_

from ..access import may_see
from ..errors import InvalidRequest, NotFound
from .values import split_escaped

if TYPE_CHECKING:
    from ..terminology.index import Terminology

MODIFIERS = {"in", "not-in", "below", "above"}
MAX_CODES = 10_000
_CHUNK = 500


def codings(
    terms: Terminology, values: list[str], modifier: str, name: str, site: str | None
) -> dict[str, set[str]]:
    """system -> codes, the union over `values` (comma = OR)."""
    out: dict[str, set[str]] = {}
    for value in values:
        try:
            if modifier in ("in", "not-in"):
                pairs = _in_value_set(terms, value, name, site)
            else:
                pairs = _subsumed(terms, value, modifier, name, site)
        except NotFound as err:
            raise InvalidRequest(f"{name}: {err.diagnostics}", (name,)) from None
        for system, code in pairs:
            out.setdefault(system, set()).add(code)
        if sum(len(codes) for codes in out.values()) > MAX_CODES:
            raise InvalidRequest(
                f"{name} stands for more than {MAX_CODES} codes; search with a smaller value set",
                (name,),
                code="too-costly",
            )
    return out


def match(t: Table, pairs: dict[str, set[str]]) -> Any:
    """Token rows holding one of the pairs (or, without a system, one of their codes)."""
    clauses = [
        and_(t.c.system == system, t.c.code.in_(chunk))
        for system, codes in sorted(pairs.items())
        for chunk in _chunks(codes)
    ]
    every = set().union(*pairs.values())
    clauses += [and_(t.c.system.is_(None), t.c.code.in_(chunk)) for chunk in _chunks(every)]
    return or_(*clauses) if clauses else false()


def _chunks(codes: set[str]) -> list[list[str]]:
    ordered = sorted(codes)
    return [ordered[i : i + _CHUNK] for i in range(0, len(ordered), _CHUNK)]


def _in_value_set(
    terms: Terminology, value: str, name: str, site: str | None
) -> list[tuple[str, str]]:
    if not value:
        raise InvalidRequest(f"{name} needs a value set url", (name,))
    kind, slash, id_ = value.partition("/")
    if kind == "ValueSet" and slash and "/" not in id_:
        value_set = _by_id(terms, id_, site)
    else:
        value_set = terms.value_set(value, None, site)
    return [(e.system, e.code) for e in terms.expand(value_set, site)]


def _by_id(terms: Terminology, id_: str, site: str | None) -> dict[str, Any]:
    for candidates in terms.value_sets.values():
        for c in candidates:
            if c.resource.get("id") == id_ and may_see(site, c.site):
                return c.resource
    raise NotFound(f"Value set ValueSet/{id_[:64]} is not known to this server")


def _subsumed(
    terms: Terminology, value: str, modifier: str, name: str, site: str | None
) -> list[tuple[str, str]]:
    parts = split_escaped(value)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise InvalidRequest(f":{modifier} needs system|code", (name,))
    system, code = parts
    cs = terms.code_system(system, None, site)
    if not cs.hierarchical:
        raise InvalidRequest(
            f"Code system {cs.url[:200]} has no hierarchy for :{modifier}",
            (name,),
            code="not-supported",
        )
    concept = cs.require(code)
    related = cs.descendants(concept.code) if modifier == "below" else cs.ancestors(concept.code)
    return [(cs.url, c) for c in (concept.code, *related)]
