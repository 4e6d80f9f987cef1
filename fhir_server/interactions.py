"""The FHIR REST table: one request in, one response out, no web framework inside.

HTTP routes and Bundle entries both go through `route()` and `Interactions.run()`, so a
transaction entry behaves exactly like the same request sent on its own.
Spec: https://hl7.org/fhir/R4B/http.html
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jsonpatch
from sqlalchemy import and_, or_

from . import access, jsonio, models, summary
from .access import Access
from .audit import Actor
from .errors import (
    FhirError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    Unavailable,
    Unprocessable,
)
from .instant import format_instant, parse_interval
from .operations import Call, Handler, Inputs
from .paging import PageTokens
from .repository import Cursor, Repository, Stored, check_id
from .schema import resource
from .search import SearchCompiler, sort
from .search.values import parse_count
from .searchparams import Registry
from .terminology import TerminologyStore

# Parameters whose index rows are per resource type: system search needs _type for them.
_NEEDS_TYPE = {"_has", "_tag", "_profile", "_security", "_source"}


@dataclass(frozen=True)
class Route:
    """What a method + path means: the interaction and its path parts."""

    interaction: str
    type: str | None = None
    id: str | None = None
    version: str | None = None
    operation: str | None = None  # "$expand" for operations


# path shape -> {method: interaction}; the one place that says which requests exist
_TABLE: dict[str, dict[str, str]] = {
    "": {"POST": "batch/transaction", "GET": "search-system"},
    "metadata": {"GET": "capabilities"},
    "_history": {"GET": "history-system"},
    "T": {
        "GET": "search-type",
        "POST": "create",
        "PUT": "conditional-update",
        "PATCH": "conditional-patch",
        "DELETE": "conditional-delete",
    },
    "T/_search": {"POST": "search-type"},
    "T/$": {"GET": "operation", "POST": "operation"},
    "T/I/$": {"GET": "operation", "POST": "operation"},
    "T/_history": {"GET": "history-type"},
    "T/I": {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"},
    "T/I/_history": {"GET": "history-instance"},
    "T/I/_history/V": {"GET": "vread"},
}


def route(method: str, path: str) -> Route:
    """Resolve a path relative to the FHIR base; 404 for unknown, 405 for a wrong method."""
    parts = [p for p in path.strip("/").split("/") if p] if path else []
    method = "GET" if method == "HEAD" else method
    shape, type_, id_, version = _shape(parts)
    methods = _TABLE[shape]
    if method not in methods:
        raise MethodNotAllowed(method, tuple(methods))
    operation = parts[-1] if shape.endswith("$") else None
    return Route(methods[method], type_, id_, None if operation else version, operation)


def _shape(parts: list[str]) -> tuple[str, str | None, str | None, str | None]:
    if not parts:
        return "", None, None, None
    if len(parts) == 1 and parts[0] in {"metadata", "_history"}:
        return parts[0], None, None, None
    type_ = parts[0]
    if not models.is_resource_type(type_):
        raise NotFound(f"Unknown resource type {type_[:64]!r}", code="not-supported")
    rest = parts[1:]
    if not rest:
        return "T", type_, None, None
    if len(rest) == 1 and rest[0] in {"_search", "_history"}:
        return f"T/{rest[0]}", type_, None, None
    if len(rest) == 1 and rest[0].startswith("$"):
        return "T/$", type_, None, None
    id_ = check_id(rest[0])
    if len(rest) == 1:
        return "T/I", type_, id_, None
    if len(rest) == 2 and rest[1].startswith("$"):
        return "T/I/$", type_, id_, None
    if rest[1] == "_history" and len(rest) in (2, 3):
        return (
            ("T/I/_history" if len(rest) == 2 else "T/I/_history/V"),
            type_,
            id_,
            (rest[2] if len(rest) == 3 else None),
        )
    raise NotFound("Unknown FHIR path")


@dataclass
class Request:
    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: Any = None  # parsed JSON (a resource, or a JSON Patch document)
    base: str = ""  # absolute FHIR base URL, no trailing slash
    access: Access | None = None  # what the caller may do; None: no authorisation
    actor: Actor | None = None  # who is calling, for the audit trail; None: not audited

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Response:
    status: int
    body: bytes | dict[str, Any] | None = None  # stored JSON bytes or a document to serialise
    headers: dict[str, str] = field(default_factory=dict)
    stored: Stored | None = None
    outcome: dict[str, Any] | None = None  # for Prefer: return=OperationOutcome

    @property
    def is_error(self) -> bool:
        return self.status >= 400


def error_response(err: FhirError) -> Response:
    headers = {}
    if isinstance(err, MethodNotAllowed):
        headers["Allow"] = ", ".join(err.allowed)
    if isinstance(err, Unavailable):
        headers["Retry-After"] = str(err.retry_after)
    return Response(err.status, err.outcome(), headers)


def http_date(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC), usegmt=True)


def version_of(etag: str | None, header: str = "If-Match") -> int | None:
    """The version in a weak or strong ETag (W/"3" or "3")."""
    if etag is None:
        return None
    text = etag.strip()
    text = text[2:] if text.startswith("W/") else text
    text = text.strip('"')
    if not text.isdigit():
        raise InvalidRequest(f'{header} must be an ETag such as W/"3"', (header,))
    return int(text)


@dataclass
class Options:
    """The knobs the FHIR layer needs, taken from primage's Settings by the app factory."""

    registry: Registry
    default_count: int = 50
    max_count: int = 1000
    # (repo, base URL) -> the CapabilityStatement (repo: the profiles stored)
    capability: Callable[[Repository, str], dict[str, Any]] | None = None
    # (type or "*", "$name") -> handler: the operations served (fhir_server/operations.py)
    operations: dict[tuple[str, str], Handler] = field(default_factory=dict)
    # the terminology index (a TerminologyStore) behind :in, :not-in, :below, :above
    terminology: TerminologyStore | None = None
    # (repo, resource) -> None or Unprocessable: the check of the profiles a write claims
    profile_check: Callable[[Repository, dict[str, Any]], None] | None = None


class Interactions:
    """Runs one routed request against a repository inside the caller's transaction."""

    def __init__(self, tokens: PageTokens, options: Options) -> None:
        self.tokens = tokens
        self.options = options

    def validated(self, repo: Repository, body: Any, resource_type: str | None) -> dict[str, Any]:
        """A write's body checked against the R4B model, then against the profiles it
        claims in meta.profile that this server knows (422 when it fails one)."""
        checked = models.validate(body, resource_type)
        if self.options.profile_check is not None and "meta" in checked:
            self.options.profile_check(repo, checked)
        return checked

    def run(self, repo: Repository, req: Request, where: Route) -> Response:
        repo.site = req.actor.site if req.actor is not None else None
        if where.interaction != "search-system":  # checked once its types are known
            access.check(req.access, where.interaction, [where.type] if where.type else None)
        if repo.site is not None and where.interaction not in access.READS:
            access.check_platform(where.type)
        handler = getattr(self, "_" + where.interaction.replace("-", "_"))
        response: Response = handler(repo, req, where)
        return response

    # --- instance level -------------------------------------------------------------------

    def _read(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type and r.id
        stored = repo.read(r.type, r.id)
        if_none_match = req.header("if-none-match")
        if if_none_match and _etag_matches(if_none_match, stored.version):
            return Response(304, None, _version_headers(stored), stored)
        since = req.header("if-modified-since")
        if since and _not_modified_since(stored.last_updated, since):
            return Response(304, None, _version_headers(stored), stored)
        shape = summary.parse(req.params)
        if shape[0] in (None, "false", "count") and not shape[1]:
            return _found(stored)
        assert stored.content is not None
        subset = summary.subset(jsonio.loads(stored.content), *shape)
        return Response(200, subset, _version_headers(stored), stored)

    def _vread(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type and r.id and r.version
        return _found(repo.vread(r.type, r.id, r.version))

    def _create(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type
        body = self.validated(repo, req.body, r.type)
        condition = req.header("if-none-exist")
        if condition:
            matches = self.matches(repo, r.type, condition, "If-None-Exist", req.access)
            if len(matches) > 1:
                raise PreconditionFailed(
                    f"If-None-Exist matched {len(matches)} resources", ("If-None-Exist",)
                )
            if matches:
                access.check(req.access, "read", [r.type])  # the answer is the stored resource
                return _found(matches[0])
        stored = repo.create(body)
        return written(stored, req.base, 201)

    def _update(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type and r.id
        body = self.validated(repo, req.body, r.type)
        if body.get("id") != r.id:
            raise InvalidRequest(
                "The resource id must be present and equal to the id in the URL"
                if "id" in body
                else "The resource has no id; PUT requires the id from the URL",
                ("id",),
            )
        stored, created = repo.update(body, r.id, version_of(req.header("if-match")))
        return written(stored, req.base, 201 if created else 200)

    def _patch(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type and r.id
        current = repo.read(r.type, r.id)
        if_match = version_of(req.header("if-match"))
        if if_match is not None and if_match != current.version:
            raise PreconditionFailed(f"{r.type}/{r.id} is at version {current.version}")
        patched = _apply_patch(current, req.body)
        if patched.get("resourceType") != r.type or patched.get("id") != r.id:
            raise Unprocessable("A patch must not change resourceType or id", ("id",))
        body = self.validated(repo, patched, r.type)
        stored, _ = repo.update(body, r.id, current.version)
        return written(stored, req.base, 200)

    def _delete(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type and r.id
        stored = repo.delete(r.type, r.id, version_of(req.header("if-match")))
        headers = {"ETag": stored.etag} if stored else {}
        return Response(204, None, headers, stored)

    # --- conditional ----------------------------------------------------------------------

    def _conditional_update(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type
        matches = self.matches(repo, r.type, req.params, "search", req.access)
        body = req.body if isinstance(req.body, dict) else {}
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The criteria matched {len(matches)} resources; be more specific"
            )
        if matches:
            target = matches[0].id
            if "id" in body and body["id"] != target:
                raise InvalidRequest("The resource id differs from the matched resource", ("id",))
        else:
            target = body.get("id") if isinstance(body.get("id"), str) else None
            if target is None:
                validated = self.validated(repo, req.body, r.type)
                return written(repo.create(validated), req.base, 201)
            check_id(target)
            if repo.current(r.type, target) is not None:
                raise _exists_error(r.type, target)
        body = {**body, "id": target}
        return self._update(repo, _with(req, body=body), Route("update", r.type, target))

    def _conditional_patch(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type
        matches = self.matches(repo, r.type, req.params, "search", req.access)
        if len(matches) != 1:
            code = 404 if not matches else 412
            raise (NotFound if code == 404 else PreconditionFailed)(
                f"Conditional patch needs exactly one match; found {len(matches)}"
            )
        return self._patch(repo, req, Route("patch", r.type, matches[0].id))

    def _conditional_delete(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type
        matches = self.matches(repo, r.type, req.params, "search", req.access)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The criteria matched {len(matches)} resources; this server deletes one at a time"
            )
        if not matches:
            return Response(204)
        return self._delete(repo, req, Route("delete", r.type, matches[0].id))

    def matches(
        self,
        repo: Repository,
        type_: str,
        criteria: str | list[tuple[str, str]],
        what: str,
        grant: Access | None = None,
    ) -> list[Stored]:
        """Conditional interactions search: the caller needs search scope on the type."""
        access.check(grant, "search-type", [type_])
        params = (
            parse_qsl(criteria, keep_blank_values=True) if isinstance(criteria, str) else criteria
        )
        params = [(k, v) for k, v in params if k not in {"_format", "_pretty"}]
        if not params:
            raise InvalidRequest(f"Conditional {what} needs search criteria", (what,))
        # strict: a conditional interaction must not ignore a criterion it cannot evaluate
        compiler = SearchCompiler(
            self.options.registry, "", repo.site, grant, self._terminology(repo)
        )
        crit = compiler.compile(type_, params, strict=True, default_count=2, max_count=2)
        return [s for _, s in repo.search_ids(type_, crit.where, None, 2)]

    def _terminology(self, repo: Repository) -> Callable[[], Any] | None:
        """The terminology snapshot for this transaction, read only if a search needs it."""
        store = self.options.terminology
        return None if store is None else lambda: store.get(repo.conn)

    # --- operations -------------------------------------------------------------------------

    def _operation(self, repo: Repository, req: Request, r: Route) -> Response:
        """An operation from the table in Options.operations, at type or instance level."""
        assert r.type and r.operation
        table = self.options.operations
        handler = table.get((r.type, r.operation)) or table.get(("*", r.operation))
        if handler is None:
            raise NotFound(
                f"Operation {r.operation[:40]} is not supported on {r.type}", code="not-supported"
            )
        instance = None
        if r.id is not None:
            stored = repo.read(r.type, r.id)
            assert stored.content is not None
            instance = jsonio.loads(stored.content)
        body = req.body if req.method == "POST" else None
        inputs = Inputs(req.params, body)
        call = Call(r.type, r.operation, inputs, instance, repo.site, req.base, req.access)
        return Response(200, handler(repo, call))

    # --- search and history ---------------------------------------------------------------

    def _search_type(self, repo: Repository, req: Request, r: Route) -> Response:
        assert r.type
        return self._search(repo, req, self._page_state(req), [r.type], f"{req.base}/{r.type}")

    def _search_system(self, repo: Repository, req: Request, r: Route) -> Response:
        """Search across types: `_type` names them; without it only _id and _lastUpdated."""
        state = self._page_state(req)
        params = state["params"] if state else req.params
        named = [v for k, v in params if k == "_type"]
        if named:
            types = sorted({t for value in named for t in value.split(",") if t})
            unknown = [t for t in types if not models.is_resource_type(t)]
            if unknown or not types:
                raise InvalidRequest(
                    f"Unknown _type {unknown[0][:64] if unknown else ''}", ("_type",)
                )
            access.check(req.access, "search-system", types)
            return self._search(repo, req, state, types, req.base)
        for name, _ in params:
            base = name.partition(":")[0]
            if not base.startswith("_") or base in _NEEDS_TYPE:
                raise InvalidRequest(
                    f"Searching all types by {name[:64]} needs _type", (name,), code="not-supported"
                )
        access.check(req.access, "search-system", None)
        return self._search(repo, req, state, None, req.base)

    def _search(
        self,
        repo: Repository,
        req: Request,
        state: dict[str, Any] | None,
        types: list[str] | None,
        path: str,
    ) -> Response:
        params = [(k, v) for k, v in (state["params"] if state else req.params) if k != "_type"]
        compiler = SearchCompiler(
            self.options.registry, req.base, repo.site, req.access, self._terminology(repo)
        )
        # R4B: with several types, every parameter must be common to all of them.
        strict = _prefers(req, "handling") == "strict" or (types is not None and len(types) > 1)
        compiled = [
            (
                type_,
                compiler.compile(
                    type_,
                    params,
                    strict=strict,
                    default_count=self.options.default_count,
                    max_count=self.options.max_count,
                ),
            )
            for type_ in (types or ["Resource"])
        ]
        crit = compiled[0][1]
        if types is None or len(types) == 1:
            where = crit.where
        else:
            where = [or_(*(and_(resource.c.type == t, *c.where) for t, c in compiled))]
        applied = (
            [("_type", ",".join(types))] if types and path == req.base else []
        ) + crit.applied
        if state and "total" in state:
            total = state["total"]  # counted once, on the first page
        else:
            total = None
            if crit.total != "none":
                sets = [ps for _, c in compiled for ps in c.sets]
                single = types is not None and len(types) == 1
                if single and sets and not any(ps.negated for ps in sets):
                    total = repo.count_matches([ps.query for ps in sets])
                else:
                    total = repo.count(types, where)
        entries: list[dict[str, Any]] = []
        links = [_link("self", path, applied)]
        if not crit.summary_count and crit.count > 0:
            parts = sort.components(
                crit.sort, resource, (types or ["Resource"])[0], self.options.registry
            )
            after = None
            if state:
                values = sort.load(parts, state["after"]["values"])
                last_pk = int(state["after"]["pk"])
                after = lambda pk: sort.after(parts, pk, values, last_pk)  # noqa: E731
            hits = repo.search_page(
                types,
                where,
                sort.order_by(parts),
                after,
                crit.count + 1,
                [p.expr for p in parts],
                sort.joins(parts),
            )
            page = [(pk, stored) for pk, _, stored in hits[: crit.count]]
            if crit.summary not in (None, "false") and crit.elements:
                raise InvalidRequest("Use _summary or _elements, not both", ("_elements",))
            shape = (crit.summary, crit.elements)
            entries += [_entry(req.base, stored, "match", shape) for _, stored in page]
            grant = req.access  # included resources need read scope for their own type
            readable = (lambda t: grant.allows(t, "r")) if grant is not None else None
            included = repo.included(
                page, crit.include, crit.revinclude, self.options.max_count, readable
            )
            entries += [_entry(req.base, stored, "include", shape) for stored in included]
            if len(hits) > crit.count:
                last_pk, last_values, _ = hits[crit.count - 1]
                token = self.tokens.encode(
                    {
                        "params": applied,
                        "after": {"pk": last_pk, "values": sort.dump(parts, last_values)},
                        "total": total,
                        "site": repo.site,
                    }
                )
                links.append({"relation": "next", "url": f"{path}?_page={token}"})
        warnings = [w for _, c in compiled for w in c.warnings]
        if warnings:
            entries.append(
                {
                    "resource": {
                        "resourceType": "OperationOutcome",
                        "issue": [i.to_json() for i in warnings],
                    },
                    "search": {"mode": "outcome"},
                }
            )
        return Response(200, _bundle("searchset", entries, links, total))

    def _history_instance(self, repo: Repository, req: Request, r: Route) -> Response:
        return self._history(repo, req, r, f"{r.type}/{r.id}/_history")

    def _history_type(self, repo: Repository, req: Request, r: Route) -> Response:
        return self._history(repo, req, r, f"{r.type}/_history")

    def _history_system(self, repo: Repository, req: Request, r: Route) -> Response:
        return self._history(repo, req, r, "_history")

    def _history(self, repo: Repository, req: Request, r: Route, path: str) -> Response:
        state = self._page_state(req)
        params = state["params"] if state else req.params
        since, count, applied = None, self.options.default_count, []
        for name, value in params:
            if name == "_since":
                since = parse_interval(value, "_since")[0]
                applied.append((name, value))
            elif name == "_count":
                count = parse_count(value, self.options.max_count)
                applied.append((name, value))
            elif (
                name not in {"_format", "_pretty", "_page"}
                and _prefers(req, "handling") == "strict"
            ):
                raise InvalidRequest(f"History parameter {name} is not supported", (name,))
        after = (
            Cursor(datetime.fromisoformat(state["after"][0]), state["after"][1], state["after"][2])
            if state
            else None
        )
        rows = repo.history(r.type, r.id, since, after, count + 1) if count else []
        entries = [_history_entry(req.base, s) for _, s in rows[:count]]
        links = [_link("self", f"{req.base}/{path}", applied)]
        if len(rows) > count:
            last = rows[count - 1][0]
            token = self.tokens.encode(
                {
                    "params": applied,
                    "after": [last.last_updated.isoformat(), last.resource_pk, last.version],
                    "site": repo.site,
                }
            )
            links.append({"relation": "next", "url": f"{req.base}/{path}?_page={token}"})
        return Response(200, _bundle("history", entries, links, None))

    def _page_state(self, req: Request) -> dict[str, Any] | None:
        token = next((v for k, v in req.params if k == "_page"), None)
        if token is None:
            return None
        state = self.tokens.decode(token)
        site = req.actor.site if req.actor is not None else None
        if state.get("site") != site:  # a link made for another site's view of the data
            raise InvalidRequest("This paging link belongs to another caller", ("_page",))
        state["params"] = [tuple(p) for p in state.get("params", [])]
        return state

    def _capabilities(self, repo: Repository, req: Request, r: Route) -> Response:
        assert self.options.capability is not None
        return Response(200, self.options.capability(repo, req.base))


def _exists_error(type_: str, id_: str) -> FhirError:
    return PreconditionFailed(
        f"No match for the criteria, but {type_}/{id_} exists; refusing to overwrite it"
    )


def _with(req: Request, **changes: Any) -> Request:
    return Request(**{**req.__dict__, **changes})


def _prefers(req: Request, key: str) -> str | None:
    """A value from the Prefer header (RFC 7240), e.g. return=minimal or handling=strict."""
    header = req.header("prefer")
    if not header:
        return None
    for part in header.replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == key:
            return value.strip().strip('"')
    return None


def prefer_return(req: Request) -> str:
    return _prefers(req, "return") or "representation"


def _etag_matches(header: str, version: int) -> bool:
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        try:
            if version_of(tag, "If-None-Match") == version:
                return True
        except InvalidRequest:
            continue
    return False


def _not_modified_since(last_updated: datetime, header: str) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False  # RFC 9110: an invalid date is ignored
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_updated.replace(microsecond=0) <= since


def _version_headers(stored: Stored) -> dict[str, str]:
    return {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}


def _found(stored: Stored) -> Response:
    return Response(200, stored.content, _version_headers(stored), stored)


def written(stored: Stored, base: str, status: int) -> Response:
    headers = _version_headers(stored)
    headers["Location"] = f"{base}/{stored.type}/{stored.id}/_history/{stored.version}"
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"{stored.type}/{stored.id} version {stored.version} stored",
            }
        ],
    }
    return Response(status, stored.content, headers, stored, outcome)


def _apply_patch(current: Stored, patch: Any) -> dict[str, Any]:
    if not isinstance(patch, list):
        raise InvalidRequest("A JSON Patch document must be a JSON array of operations")
    assert current.content is not None
    document = jsonio.loads(current.content)
    try:
        result = jsonpatch.JsonPatch(patch).apply(document)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
        kind = "test failed" if isinstance(exc, jsonpatch.JsonPatchTestFailed) else "invalid"
        raise Unprocessable(f"JSON Patch could not be applied ({kind}): {exc}") from None
    if not isinstance(result, dict):
        raise Unprocessable("A JSON Patch must leave a resource")
    return result


def _link(relation: str, url: str, params: list[tuple[str, str]]) -> dict[str, str]:
    return {"relation": relation, "url": f"{url}?{urlencode(params)}" if params else url}


def _entry(
    base: str, stored: Stored, mode: str, shape: tuple[str | None, list[str] | None]
) -> dict[str, Any]:
    assert stored.content is not None
    if shape[0] in (None, "false") and not shape[1]:
        body: Any = jsonio.raw(stored.content)  # as stored, not parsed again
    else:
        body = summary.subset(jsonio.loads(stored.content), *shape)
    return {"fullUrl": f"{base}/{stored.reference}", "resource": body, "search": {"mode": mode}}


def _history_entry(base: str, stored: Stored) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": f"{base}/{stored.reference}"}
    if stored.content is not None:
        entry["resource"] = jsonio.raw(stored.content)
    url = stored.type if stored.method == "POST" else stored.reference
    entry["request"] = {"method": stored.method, "url": url}
    entry["response"] = {
        "status": {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}.get(
            stored.method, "200 OK"
        ),
        "etag": stored.etag,
        "lastModified": format_instant(stored.last_updated),
    }
    return entry


def _bundle(
    kind: str, entries: list[dict[str, Any]], links: list[dict[str, str]], total: int | None
) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle


def decode_binary_patch(resource: Any) -> Any:
    """A transaction PATCH entry carries its JSON Patch as a Binary (R4B 3.1.0.11.3)."""
    if (
        isinstance(resource, dict)
        and resource.get("resourceType") == "Binary"
        and resource.get("contentType", "").startswith("application/json-patch+json")
    ):
        try:
            return jsonio.loads(base64.b64decode(resource.get("data", ""), validate=True))
        except (ValueError, jsonio.InvalidJson):
            raise InvalidRequest("The Binary does not hold a JSON Patch document") from None
    raise InvalidRequest(
        "PATCH in a Bundle needs a Binary with contentType application/json-patch+json",
        code="not-supported",
    )
