"""Compile a FHIR search (a multi-dict of parameters) into SQL over the index tables.

Each parameter becomes `pk IN (SELECT resource_pk FROM <index table> WHERE ...)`: comma
values are OR inside it, repeated parameters are separate INs (AND). Chains
(`subject:Patient.name=x`) nest an IN over the referenced resources, `_has` one over the
referring resources; both recurse, to MAX_DEPTH levels. The subqueries are not correlated,
so both databases evaluate each once (a semi-join) instead of once per candidate row, and
each can use its table's (type, param, value) index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, not_, or_, select
from sqlalchemy.orm import aliased

from .. import summary
from ..access import Forbidden
from ..errors import InvalidRequest, Issue
from ..models import is_resource_type
from ..schema import INDEX_TABLES, resource, search_reference
from ..searchparams import Registry, SearchParam
from . import concepts, date, number, reference, string, token, uri
from .sort import parse_sort
from .values import parse_count, split_values

if TYPE_CHECKING:
    from ..terminology import Terminology

MAX_DEPTH = 3
IGNORED = {"_format", "_pretty", "_page"}

_MATCHERS: dict[str, tuple[set[str], Callable[..., Any]]] = {
    "token": (token.MODIFIERS, token.match),
    "string": (string.MODIFIERS, string.match),
    "date": (date.MODIFIERS, date.match),
    "number": (number.MODIFIERS, number.match),
    "quantity": (number.MODIFIERS, number.match_quantity),
    "uri": (uri.MODIFIERS, uri.match),
}


@dataclass(frozen=True)
class Include:
    """`_include` / `_revinclude`: source type, reference parameter (None: all), target type."""

    source: str
    param: str | None
    target: str | None
    iterate: bool


@dataclass(frozen=True)
class PkSet:
    """A parameter's matches as a one-column SELECT of resource pks; negated: the others."""

    query: Any
    negated: bool


@dataclass
class Criteria:
    where: list[Any] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    count: int = 50
    total: str | None = None
    summary_count: bool = False
    include: list[Include] = field(default_factory=list)
    revinclude: list[Include] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (code, descending)
    sets: list[PkSet] = field(default_factory=list)  # one per applied search parameter
    summary: str | None = None  # _summary true | false | text | data
    elements: list[str] | None = None


class Unsupported(InvalidRequest):
    """A parameter or modifier this server does not evaluate (lenient: a warning)."""

    code = "not-supported"


class SearchCompiler:
    def __init__(
        self,
        registry: Registry,
        base: str,
        site: str | None = None,
        grant: Any = None,
        terminology: Callable[[], Terminology] | None = None,
    ) -> None:
        self.registry = registry
        self.base = base
        self.site = site  # chains and _has look only at resources this site may see
        self.grant = grant  # ...and only into types the caller may search (None: any)
        self._terminology = terminology  # for :in, :not-in, :below, :above on tokens
        self._terms: Terminology | None = None

    def terms(self, name: str) -> Terminology:
        """The terminology snapshot, read once per compiler (that is, per search)."""
        if self._terminology is None:
            raise Unsupported(f"{name[:64]}: this server has no terminology for the modifier")
        if self._terms is None:
            self._terms = self._terminology()
        return self._terms

    def _searchable(self, type_: str) -> None:
        if self.grant is not None and not self.grant.allows(type_, "s"):
            raise Forbidden(f"A chain or _has looks into {type_}, which the token cannot search")

    def _visible(self, res: Any) -> list[Any]:
        if self.site is None:
            return []
        return [or_(res.c.site == self.site, res.c.site.is_(None))]

    def compile(
        self,
        type_: str,
        params: list[tuple[str, str]],
        *,
        strict: bool,
        default_count: int,
        max_count: int,
    ) -> Criteria:
        crit = Criteria(count=default_count)
        bounds = self._bounds(type_, params)
        for name, value in params:
            try:
                if name in IGNORED:
                    continue
                if name in bounds:
                    if bounds[name]:  # the first of the repeats carries all of them
                        param = self.registry.get(type_, name)
                        assert param is not None
                        pks = self._param(type_, param, "", bounds.pop(name), name)
                        bounds[name] = []
                        crit.sets.append(pks)
                        crit.where.append(condition(resource, pks))
                    crit.applied.append((name, value))
                elif not self._result_parameter(crit, type_, name, value, max_count):
                    pks = self.pk_set(type_, name, value, 0)
                    crit.sets.append(pks)
                    crit.where.append(condition(resource, pks))
                crit.applied.append((name, value))
            except Unsupported as err:
                if strict:
                    raise
                crit.warnings.append(Issue("warning", "not-supported", err.diagnostics, (name,)))
        return crit

    def _bounds(self, type_: str, params: list[tuple[str, str]]) -> dict[str, list[str]]:
        """Repeated range parameters on a single-valued element: values to test together."""
        seen: dict[str, list[str]] = {}
        for name, value in params:
            param = self.registry.get(type_, name) if ":" not in name else None
            if param and param.single and param.type in ("date", "number", "quantity"):
                seen.setdefault(name, []).append(value)
        return {name: values for name, values in seen.items() if len(values) > 1}

    def _result_parameter(
        self, crit: Criteria, type_: str, name: str, value: str, max_count: int
    ) -> bool:
        if name == "_sort":
            crit.sort = parse_sort(value, type_, self.registry)
        elif name == "_count":
            crit.count = parse_count(value, max_count)
        elif name == "_total":
            if value not in {"none", "estimate", "accurate"}:
                raise InvalidRequest("_total is none, estimate or accurate", ("_total",))
            crit.total = value
        elif name == "_summary":
            if value not in summary.SUMMARY_MODES:
                raise InvalidRequest("_summary is true, false, text, data or count", (name,))
            crit.summary_count = value == "count"
            crit.summary = None if value == "count" else value
        elif name == "_elements":
            crit.elements = [e.strip() for e in value.split(",") if e.strip()]
        elif name.split(":")[0] in ("_include", "_revinclude"):
            kind, _, modifier = name.partition(":")
            if modifier not in ("", "iterate", "recurse"):
                raise InvalidRequest(f"Unknown modifier on {kind}", (name,))
            spec = self._include(value, kind, modifier != "")
            (crit.include if kind == "_include" else crit.revinclude).append(spec)
        elif (
            name.startswith("_")
            and name not in ("_id", "_lastUpdated")
            and not name.startswith("_has:")
            and name.split(":")[0] not in {"_tag", "_profile", "_security", "_source"}
        ):
            raise Unsupported(f"Parameter {name[:64]} is not supported")
        else:
            return False
        return True

    def _include(self, value: str, kind: str, iterate: bool) -> Include:
        parts = value.split(":")
        if len(parts) not in (2, 3) or not is_resource_type(parts[0]):
            raise InvalidRequest(f"{kind} is Type:param[:TargetType] or Type:*", (kind,))
        source, param = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if param != "*":
            found = self.registry.get(source, param)
            if found is None or found.type != "reference":
                raise InvalidRequest(f"{source}:{param} is not a reference parameter", (kind,))
        if target is not None and not is_resource_type(target):
            raise InvalidRequest(f"Unknown target type {target[:64]}", (kind,))
        return Include(source, None if param == "*" else param, target, iterate)

    # --- one parameter --------------------------------------------------------------------

    def pk_set(self, type_: str, name: str, value: str, depth: int) -> PkSet:
        """The pks of current `type_` resources that match one parameter."""
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"Chains and _has nest at most {MAX_DEPTH} levels", (name,))
        if name.startswith("_has:"):
            return self._has(type_, name, value, depth)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        if dot:
            return self._chain(type_, code, modifier, rest, value, depth)
        if code in ("_id", "_lastUpdated"):
            return self._on_resource(type_, code, modifier, value, name)
        param = self.registry.get(type_, code)
        if param is None:
            raise Unsupported(f"{type_} has no search parameter {code[:64]!r} here")
        return self._param(type_, param, modifier, value, name)

    def _param(self, type_: str, param: SearchParam, modifier: str, value: str, name: str) -> PkSet:
        # Index rows exist only for current, non-deleted versions, and carry their type.
        table = aliased(INDEX_TABLES[param.type])
        rows = [table.c.type == type_, table.c.param == param.code]
        if modifier == "missing":
            if value not in ("true", "false"):
                raise InvalidRequest(f"{name} takes true or false", (name,))
            return PkSet(select(table.c.resource_pk).where(*rows), negated=value == "true")
        groups = []
        for raw in [value] if isinstance(value, str) else value:
            values = split_values(raw, name)
            if param.type == "token" and modifier in concepts.MODIFIERS:
                pairs = concepts.codings(self.terms(name), values, modifier, name, self.site)
                matches = [concepts.match(table, pairs)]
            elif param.type == "reference":
                if not reference.modifiers_ok(modifier):
                    raise Unsupported(f"Modifier :{modifier[:32]} is not supported on {param.code}")
                matches = [
                    reference.match(table, v, modifier, name, self.base, param.targets)
                    for v in values
                ]
            else:
                modifiers, matcher = _MATCHERS[param.type]
                if modifier not in modifiers:
                    raise Unsupported(f"Modifier :{modifier[:32]} is not supported on {param.code}")
                matches = [
                    matcher(table, v, "" if modifier == "not" else modifier, name) for v in values
                ]
            groups.append(or_(*matches))
        query = select(table.c.resource_pk).where(*rows, *groups)
        return PkSet(query, negated=modifier in ("not", "not-in"))

    def _on_resource(self, type_: str, code: str, modifier: str, value: str, name: str) -> PkSet:
        if modifier:
            raise Unsupported(f"Modifier :{modifier[:32]} is not supported on {code}")
        res = aliased(resource)
        values = split_values(value, name)
        if code == "_id":
            match = res.c.id.in_(values)
        else:
            last = res.c.last_updated
            match = or_(*(date.interval_match(last, last, v, name) for v in values))
        # "Resource" stands for every type (system-level search without _type)
        of_type = [] if type_ == "Resource" else [res.c.type == type_]
        return PkSet(select(res.c.pk).where(*of_type, res.c.deleted.is_(False), match), False)

    def _chain(
        self, type_: str, code: str, target: str, rest: str, value: str, depth: int
    ) -> PkSet:
        param = self.registry.get(type_, code)
        if param is None or param.type != "reference":
            raise InvalidRequest(
                f"Chaining needs a reference parameter; {type_}.{code[:64]} is not one", (code,)
            )
        if target and not is_resource_type(target):
            raise InvalidRequest(f"Unknown type {target[:64]} in chain", (code,))
        candidates = [target] if target else list(param.targets)
        next_code = rest.partition(".")[0].partition(":")[0]
        usable = [
            t
            for t in candidates
            if next_code in ("_id", "_lastUpdated") or self.registry.get(t, next_code)
        ]
        if not usable:
            raise InvalidRequest(
                f"No target of {type_}.{code} has a search parameter {next_code[:64]!r}", (code,)
            )
        for t in usable:
            self._searchable(t)
        ref = aliased(search_reference)
        referenced = aliased(resource)
        per_type = [
            and_(
                referenced.c.type == t,
                condition(referenced, self.pk_set(t, rest, value, depth + 1)),
            )
            for t in usable
        ]
        query = (
            select(ref.c.resource_pk)
            .select_from(ref)
            .join(
                referenced,
                and_(referenced.c.type == ref.c.target_type, referenced.c.id == ref.c.target_id),
            )
            .where(ref.c.type == type_, ref.c.param == code, or_(*per_type))
            .where(*self._visible(referenced))
        )
        return PkSet(query, False)

    def _has(self, type_: str, name: str, value: str, depth: int) -> PkSet:
        parts = name.split(":", 3)
        if len(parts) != 4 or not is_resource_type(parts[1]):
            raise InvalidRequest("_has is _has:Type:reference-param:search-param", ("_has",))
        source, code, inner = parts[1], parts[2], parts[3]
        param = self.registry.get(source, code)
        if param is None or param.type != "reference":
            raise InvalidRequest(f"{source}.{code[:64]} is not a reference parameter", ("_has",))
        self._searchable(source)
        ref = aliased(search_reference)
        referring = aliased(resource)
        target = aliased(resource)
        query = (
            select(target.c.pk)
            .select_from(ref)
            .join(referring, referring.c.pk == ref.c.resource_pk)
            .join(target, and_(target.c.type == ref.c.target_type, target.c.id == ref.c.target_id))
            .where(
                ref.c.type == source,
                ref.c.param == code,
                ref.c.target_type == type_,
                target.c.deleted.is_(False),
                condition(referring, self.pk_set(source, inner, value, depth + 1)),
                *self._visible(referring),
            )
        )
        return PkSet(query, False)


def condition(res: Any, pks: PkSet) -> Any:
    """`res.pk` in (or, negated, not in) the set."""
    found = res.c.pk.in_(pks.query)
    return not_(found) if pks.negated else found
