"""The FHIR service: route a request, pick its transaction, run it, turn errors into outcomes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.exc import DBAPIError, OperationalError

from . import audit as audit_events
from . import jsonio
from .bundles import Bundles
from .errors import FhirError, Unavailable
from .interactions import Interactions, Request, Response, Route, error_response, route
from .repository import Repository

log = logging.getLogger("primage.fhir")

READ_ONLY = {
    "read",
    "vread",
    "search-type",
    "search-system",
    "history-instance",
    "history-type",
    "history-system",
    "capabilities",
    "operation",  # every operation served (terminology) only reads
}


class FhirService:
    def __init__(
        self,
        interactions: Interactions,
        read: Callable[[], AbstractContextManager[Repository]],
        write: Callable[[], AbstractContextManager[Repository]],
        audit: audit_events.Sink | None = None,
        before_audit_read: Callable[[], object] | None = None,
        gateway: Callable[[Request, str, str], Request] | None = None,
    ) -> None:
        self.interactions = interactions
        self.bundles = Bundles(interactions, write)
        self._read = read
        self._write = write
        self.audit = audit
        self.before_audit_read = before_audit_read  # stored-but-unindexed events first
        # The pseudonymisation gateway: rewrites a site's writes (request, interaction, site)
        self.gateway = gateway
        if audit is not None:
            self.bundles.audit = self._audit_transaction
            self.bundles.audit_entry = self._audit
        self.load_search_parameters()

    def load_search_parameters(self) -> None:
        """Put the stored, active SearchParameters into the registry (this process only)."""
        try:
            with self._read() as repo:
                stored = repo.all_current("SearchParameter", platform=True)
        except DBAPIError:  # a database not migrated yet has no resources to offer
            return
        definitions = [jsonio.loads(s.content) for s in stored if s.content is not None]
        self.interactions.options.registry.use_custom(
            [d for d in definitions if d.get("status") == "active"]
        )

    def handle(self, req: Request) -> tuple[str, Response]:
        """Returns (interaction name, response); the name labels metrics and the audit trail.

        A successful write's AuditEvent commits with the write; reads, batches and failures
        are handed to the sink without a transaction (it queues them)."""
        interaction = "unknown"
        where = None
        try:
            where = route(req.method, req.path)
            interaction = where.interaction
            actor = req.actor
            if self.gateway and actor and actor.needs_gateway and interaction not in READ_ONLY:
                where = Route(interaction, where.type)  # the site's own id stays out of audit
                req = self.gateway(req, interaction, str(actor.site))
                where = route(req.method, req.path)
            if self.before_audit_read is not None and _reads_audit(req, where):
                self.before_audit_read()
            if interaction == "batch/transaction":
                response = self.bundles.process(req)
                if response.is_error:  # a batch's entries and a transaction audit themselves
                    self._audit(None, req, _bundle_type(req), where, response)
            else:
                transaction = self._read if interaction in READ_ONLY else self._write
                with transaction() as repo:
                    response = self.interactions.run(repo, req, where)
                    if interaction not in READ_ONLY and not response.is_error:
                        self._audit(repo, req, interaction, where, response)
                if interaction in READ_ONLY or response.is_error:
                    self._audit(None, req, interaction, where, response)
            if interaction not in READ_ONLY and not response.is_error and _touches_parameters(req):
                self.load_search_parameters()
            return interaction, response
        except FhirError as err:
            level = logging.WARNING if err.status < 500 else logging.ERROR
            log.log(level, "%s %s: %s %s", req.method, interaction, err.status, err.code)
            response = error_response(err)
            self._audit(None, req, interaction, where, response)
            return interaction, response
        except DBAPIError as exc:
            if not _transient(exc):
                raise
            # The driver's message can quote statement parameters (resource content): log
            # only the kind of fault.
            log.error("%s %s: database unavailable (%s)", req.method, interaction, _kind(exc))
            return interaction, error_response(Unavailable("The database is unavailable; retry"))

    def _audit(
        self,
        repo: Repository | None,
        req: Request,
        interaction: str,
        where: Route | None,
        response: Response,
    ) -> None:
        if self.audit is None or req.actor is None or interaction == "capabilities":
            return
        if interaction == "batch/transaction":
            interaction = _bundle_type(req)
        # A site behind the gateway may still type its own identifiers into a request (a name
        # to search, an MRN as id): those stay out of the trail, which is data at rest.
        masked = self.gateway is not None and bool(req.actor.site)
        references = []
        if response.stored is not None:
            references.append(response.stored.reference)
        elif where is not None and where.type and where.id and not masked:
            references.append(f"{where.type}/{where.id}")
        searching = interaction.startswith(("search", "history-type", "history-system"))
        params = [(k, "***") for k, _ in req.params] if masked else req.params
        query = urlencode(params) if searching else None
        event = audit_events.fhir_event(
            req.actor,
            interaction,
            response.status,
            references=references,
            resource_type=where.type if where is not None else None,
            query=query,
        )
        self.audit(repo, event)

    def _audit_transaction(self, repo: Repository, req: Request, written: list[str]) -> None:
        if self.audit is not None and req.actor is not None:
            event = audit_events.fhir_event(req.actor, "transaction", 200, references=written)
            self.audit(repo, event)


def _reads_audit(req: Request, where: Route) -> bool:
    """Could this request return AuditEvents (by type, _type, or all types at once)?"""
    if where.type is not None:
        return where.type == "AuditEvent" and where.interaction in READ_ONLY
    if where.interaction in ("search-system", "history-system"):
        named = [t for k, v in req.params if k == "_type" for t in v.split(",")]
        return not named or "AuditEvent" in named or any(k == "_page" for k, _ in req.params)
    if where.interaction == "batch/transaction" and isinstance(req.body, dict):
        urls = _entry_urls(req.body)
        return any(u.startswith(("AuditEvent", "?", "_history")) or not u for u in urls)
    return False


def _entry_urls(bundle: dict[str, Any]) -> list[str]:
    """Each entry's request.url, leniently: the Bundle is validated later, not here."""
    entries = bundle.get("entry")
    out = []
    for entry in entries if isinstance(entries, list) else []:
        request = entry.get("request") if isinstance(entry, dict) else None
        url = request.get("url") if isinstance(request, dict) else None
        out.append(url.lstrip("/") if isinstance(url, str) else "")
    return out


def _bundle_type(req: Request) -> str:
    body = req.body
    kind = body.get("type") if isinstance(body, dict) else None
    return "transaction" if kind == "transaction" else "batch"


def _touches_parameters(req: Request) -> bool:
    """Did this write create, change or delete a SearchParameter?"""
    if req.path.strip("/").startswith("SearchParameter"):
        return True
    body = req.body
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return any(url.startswith("SearchParameter") for url in _entry_urls(body))
    return False


def _transient(exc: DBAPIError) -> bool:
    """Unreachable database, lost connections, deadlocks, serialization failures, locks."""
    code = getattr(exc.orig, "pgcode", None)
    return bool(
        isinstance(exc, OperationalError)
        or exc.connection_invalidated
        or (code and code[:2] in {"08", "40", "53", "57"})
    )


def _kind(exc: DBAPIError) -> str:
    return getattr(exc.orig, "pgcode", None) or type(exc.orig).__name__
