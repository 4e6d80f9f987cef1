"""Batch and transaction Bundles (https://hl7.org/fhir/R4B/http.html#transaction).

A transaction runs every entry in one database transaction, in the order the spec
prescribes (DELETE, POST, PUT/PATCH, GET/HEAD), after giving each POST its id and rewriting
`urn:uuid:` and conditional references; any failure rolls back all of it. A batch runs each
entry in its own transaction and reports each outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import access, jsonio, models
from .errors import FhirError, InvalidRequest, Issue, PreconditionFailed
from .instant import format_instant
from .interactions import (
    Interactions,
    Request,
    Response,
    Route,
    decode_binary_patch,
    error_response,
    prefer_return,
    route,
    written,
)
from .repository import Repository

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
MAX_ENTRIES = 10_000


@dataclass
class Entry:
    index: int
    method: str
    url: str
    path: str
    params: list[tuple[str, str]]
    resource: Any
    full_url: str | None
    headers: dict[str, str]
    where: Route


class Bundles:
    def __init__(
        self,
        interactions: Interactions,
        write: Callable[[], AbstractContextManager[Repository]],
    ) -> None:
        self.interactions = interactions
        self.write = write
        # called inside a transaction's database transaction with what it wrote
        self.audit: Callable[[Repository, Request, list[str]], None] | None = None
        # called for each batch entry: in its transaction after a write (repo), else None
        self.audit_entry: (
            Callable[[Repository | None, Request, str, Route, Response], None] | None
        ) = None

    def process(self, req: Request) -> Response:
        bundle = req.body
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise InvalidRequest("POST to the base takes a Bundle", ("resourceType",))
        kind = bundle.get("type")
        if kind not in {"transaction", "batch"}:
            raise InvalidRequest("Bundle.type must be transaction or batch", ("Bundle.type",))
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise InvalidRequest("Bundle.entry must be an array", ("Bundle.entry",))
        if len(raw_entries) > MAX_ENTRIES:
            raise InvalidRequest(f"At most {MAX_ENTRIES} entries per Bundle", ("Bundle.entry",))
        if kind == "batch":
            return self._batch(req, raw_entries)
        entries = [_parse_entry(i, e, strict=True) for i, e in enumerate(raw_entries)]
        assert all(isinstance(e, Entry) for e in entries)
        return self._transaction(req, entries)  # type: ignore[arg-type]

    # --- batch ---------------------------------------------------------------------------

    def _batch(self, req: Request, raw_entries: list[Any]) -> Response:
        results: list[dict[str, Any]] = []
        for i, raw in enumerate(raw_entries):
            try:
                entry = _parse_entry(i, raw, strict=False)
                if isinstance(entry, FhirError):
                    raise entry
                if entry.where.interaction == "batch/transaction":
                    raise InvalidRequest("Bundles cannot nest", (f"Bundle.entry[{i}]",))
                entry_req = _entry_request(req, entry)
                with self.write() as repo:
                    response = self.interactions.run(repo, entry_req, entry.where)
                    if response.is_error:
                        raise _Failed(response)
                    if self.audit_entry is not None:  # commits with the entry's write
                        self.audit_entry(
                            repo, entry_req, entry.where.interaction, entry.where, response
                        )
            except FhirError as err:
                response = error_response(err)
                self._audit_failure(req, raw, response)
            except _Failed as failed:
                response = failed.response
                self._audit_failure(req, raw, response)
            results.append(_response_entry(req, response))
        return Response(200, _bundle("batch-response", results))

    def _audit_failure(self, req: Request, raw: Any, response: Response) -> None:
        if self.audit_entry is None:
            return
        try:
            entry = _parse_entry(0, raw, strict=False)
        except FhirError:
            return
        if isinstance(entry, Entry):
            interaction = entry.where.interaction
            self.audit_entry(None, _entry_request(req, entry), interaction, entry.where, response)

    # --- transaction ---------------------------------------------------------------------

    def _transaction(self, req: Request, entries: list[Entry]) -> Response:
        _refuse_duplicates(entries)
        responses: dict[int, Response] = {}
        with self.write() as repo:
            repo.site = req.actor.site if req.actor is not None else None
            ids = self._assign_ids(repo, req, entries, responses)
            for entry in entries:
                if isinstance(entry.resource, dict):
                    entry.resource = _rewrite(
                        entry.resource,
                        ids,
                        lambda ref, e=entry: self._resolve(repo, req, ref, e),
                    )
            pending = sorted(
                (e for e in entries if e.index not in responses),
                key=lambda e: (ORDER[e.method], e.index),
            )
            creates = [e for e in pending if e.where.interaction == "create"]
            for entry in pending:
                if creates and ORDER[entry.method] >= ORDER["POST"]:
                    self._create_all(repo, req, creates, ids, responses)
                    creates = []
                if entry.index in responses:
                    continue
                try:
                    responses[entry.index] = self._run(repo, req, entry)
                except FhirError as err:
                    raise _located(err, entry) from None
                if responses[entry.index].is_error:
                    raise _located(_as_error(responses[entry.index]), entry)
            if self.audit is not None:
                written = [r.stored.reference for r in responses.values() if r.stored]
                self.audit(repo, req, written)
        results = [_response_entry(req, responses[e.index]) for e in entries]
        return Response(200, _bundle("transaction-response", results))

    def _assign_ids(
        self, repo: Repository, req: Request, entries: list[Entry], responses: dict[int, Response]
    ) -> dict[str, str]:
        """fullUrl -> Type/id for every entry another entry may reference."""
        ids: dict[str, str] = {}
        for entry in entries:
            type_ = entry.where.type
            if entry.method == "POST" and type_:
                if if_none_exist := entry.headers.get("if-none-exist"):
                    access.check(req.access, "create", [type_])
                    found = self.interactions.matches(
                        repo, type_, if_none_exist, "If-None-Exist", req.access
                    )
                    if len(found) > 1:
                        raise _located(
                            PreconditionFailed(f"ifNoneExist matched {len(found)} resources"), entry
                        )
                    if found:
                        access.check(req.access, "read", [type_])  # answered with its content
                        ids[entry.full_url or ""] = found[0].reference
                        responses[entry.index] = Response(
                            200, found[0].content, {"ETag": found[0].etag}, found[0]
                        )
                        continue
                ids[entry.full_url or ""] = f"{type_}/{uuid.uuid4()}"
            elif entry.method == "PUT" and type_ and entry.where.id:
                ids[entry.full_url or ""] = f"{type_}/{entry.where.id}"
        ids.pop("", None)
        return ids

    def _resolve(self, repo: Repository, req: Request, reference: str, entry: Entry) -> str:
        """A conditional reference (Type?criteria) must match exactly one resource."""
        type_, _, query = reference.partition("?")
        if not models.is_resource_type(type_):
            raise _located(InvalidRequest(f"Unknown type in reference {type_[:64]}"), entry)
        found = self.interactions.matches(repo, type_, query, "reference", req.access)
        if len(found) != 1:
            raise _located(
                PreconditionFailed(
                    f"A conditional reference to {type_} matched {len(found)} resources; "
                    "it must match exactly one"
                ),
                entry,
            )
        return found[0].reference

    def _create_all(
        self,
        repo: Repository,
        req: Request,
        creates: list[Entry],
        ids: dict[str, str],
        responses: dict[int, Response],
    ) -> None:
        """All plain creates as one batch of inserts, in their place after the DELETEs.

        Creates cannot depend on each other (their references were rewritten already), so
        one batch keeps the prescribed order and saves two round trips per resource.
        """
        items = []
        for entry in creates:
            try:
                access.check(req.access, "create", [entry.where.type or "*"])
                if repo.site is not None:
                    access.check_platform(entry.where.type)
                body = self.interactions.validated(repo, entry.resource, entry.where.type)
            except FhirError as err:
                raise _located(err, entry) from None
            target = ids.get(entry.full_url or "")
            items.append((body, target.split("/", 1)[1] if target else str(uuid.uuid4())))
        for entry, stored in zip(creates, repo.create_many(items), strict=True):
            responses[entry.index] = written(stored, req.base, 201)

    def _run(self, repo: Repository, req: Request, entry: Entry) -> Response:
        if entry.where.interaction == "batch/transaction":
            raise InvalidRequest("Bundles cannot nest")
        return self.interactions.run(repo, _entry_request(req, entry), entry.where)


class _Failed(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _as_error(response: Response) -> FhirError:
    err = FhirError("Entry failed")
    err.status = response.status
    if isinstance(response.body, dict):
        err.issues = []
        for issue in response.body.get("issue", []):
            err.issues.append(Issue(issue["severity"], issue["code"], issue.get("diagnostics", "")))
    return err


def _located(err: FhirError, entry: Entry) -> FhirError:
    """Say which entry failed, keeping the status of the underlying error."""
    prefix = f"Bundle.entry[{entry.index}]"
    err.diagnostics = f"{prefix} ({entry.method} {entry.path or '/'}): {err.diagnostics}"
    err.expression = (prefix, *err.expression)
    err.issues = [
        type(i)(i.severity, i.code, f"{prefix}: {i.diagnostics}", (prefix, *i.expression))
        for i in err.issues
    ]
    return err


def _parse_entry(index: int, raw: Any, *, strict: bool) -> Entry | FhirError:
    where = f"Bundle.entry[{index}]"
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise InvalidRequest(f"{where} has no request", (f"{where}.request",))
        request = raw["request"]
        method = request.get("method")
        url = request.get("url")
        if method not in ORDER or not isinstance(url, str) or not url:
            raise InvalidRequest(
                f"{where}.request needs a method (GET, HEAD, POST, PUT, PATCH, DELETE) and a url",
                (f"{where}.request",),
            )
        parts = urlsplit(url)
        if parts.scheme:  # absolute URLs are accepted only as ours; keep the path after /fhir/
            raise InvalidRequest(f"{where}.request.url must be relative", (f"{where}.request.url",))
        headers = {
            header: str(request[key])
            for key, header in (
                ("ifNoneExist", "if-none-exist"),
                ("ifMatch", "if-match"),
                ("ifNoneMatch", "if-none-match"),
                ("ifModifiedSince", "if-modified-since"),
            )
            if request.get(key)
        }
        resource = raw.get("resource")
        if method == "PATCH":
            resource = decode_binary_patch(resource)
        elif method in {"POST", "PUT"} and not isinstance(resource, dict):
            raise InvalidRequest(f"{where} needs a resource", (f"{where}.resource",))
        full_url = raw.get("fullUrl")
        return Entry(
            index=index,
            method=method,
            url=url,
            path=parts.path,
            params=parse_qsl(parts.query, keep_blank_values=True),
            resource=resource,
            full_url=full_url if isinstance(full_url, str) else None,
            headers=headers,
            where=route(method, parts.path),
        )
    except FhirError as err:
        if strict:
            raise _at(err, index) from None
        return err


def _at(err: FhirError, index: int) -> FhirError:
    prefix = f"Bundle.entry[{index}]"
    if not err.diagnostics.startswith(prefix):
        err.diagnostics = f"{prefix}: {err.diagnostics}"
    return err


def _refuse_duplicates(entries: list[Entry]) -> None:
    """R4B: a transaction must not touch the same resource twice."""
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.method in {"PUT", "PATCH", "DELETE"} and entry.where.id:
            key = f"{entry.where.type}/{entry.where.id}"
            if key in seen:
                raise InvalidRequest(
                    f"Bundle.entry[{entry.index}] touches {key} again (first in entry "
                    f"{seen[key]}); a transaction may touch each resource once",
                    (f"Bundle.entry[{entry.index}]",),
                )
            seen[key] = entry.index
        if entry.full_url and entry.method == "POST":
            if entry.full_url in seen:
                raise InvalidRequest(
                    f"Bundle.entry[{entry.index}].fullUrl is used twice",
                    (f"Bundle.entry[{entry.index}].fullUrl",),
                )
            seen[entry.full_url] = entry.index


def _rewrite(node: Any, ids: dict[str, str], resolve: Callable[[str], str]) -> Any:
    """Replace urn:uuid: and conditional references anywhere in a resource."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if value in ids:
                    value = ids[value]
                elif "?" in value and not value.startswith(("http:", "https:", "#")):
                    value = resolve(value)
                elif value.startswith("urn:uuid:"):
                    raise InvalidRequest(
                        f"Reference {value[:60]} matches no entry's fullUrl", ("reference",)
                    )
            out[key] = _rewrite(value, ids, resolve) if key != "reference" else value
        return out
    if isinstance(node, list):
        return [_rewrite(v, ids, resolve) for v in node]
    return node


def _entry_request(req: Request, entry: Entry) -> Request:
    return Request(
        method=entry.method,
        path=entry.path,
        params=entry.params,
        headers={**entry.headers, **({"prefer": p} if (p := req.header("prefer")) else {})},
        body=entry.resource,
        base=req.base,
        access=req.access,  # every entry is checked as the same request on its own
        actor=req.actor,
    )


def _response_entry(req: Request, response: Response) -> dict[str, Any]:
    """entry.response (status, location, etag, lastModified, outcome) and, if asked, resource."""
    out: dict[str, Any] = {}
    result: dict[str, Any] = {"status": _status_line(response.status)}
    if "Location" in response.headers:
        result["location"] = response.headers["Location"]
    if "ETag" in response.headers:
        result["etag"] = response.headers["ETag"]
    if response.stored is not None:
        result["lastModified"] = format_instant(response.stored.last_updated)
    if response.is_error:
        result["outcome"] = response.body
    else:
        wanted = prefer_return(req) if req.header("prefer") else "minimal"
        if wanted == "representation" and response.body is not None:
            body = response.body
            out["resource"] = jsonio.raw(body) if isinstance(body, bytes) else body
        elif wanted == "OperationOutcome" and response.outcome is not None:
            result["outcome"] = response.outcome
    out["response"] = result
    return out


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
}


def _status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, '')}".strip()


def _bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": kind, "entry": entries}
