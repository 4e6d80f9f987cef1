"""The FHIR service: route a request, pick its transaction, run it, turn errors into outcomes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy.exc import DBAPIError, OperationalError

from . import jsonio
from .bundles import Bundles
from .errors import FhirError, Unavailable
from .interactions import Interactions, Request, Response, error_response, route
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
}


class FhirService:
    def __init__(
        self,
        interactions: Interactions,
        read: Callable[[], AbstractContextManager[Repository]],
        write: Callable[[], AbstractContextManager[Repository]],
    ) -> None:
        self.interactions = interactions
        self.bundles = Bundles(interactions, write)
        self._read = read
        self._write = write
        self.load_search_parameters()

    def load_search_parameters(self) -> None:
        """Put the stored, active SearchParameters into the registry (this process only)."""
        try:
            with self._read() as repo:
                stored = repo.all_current("SearchParameter")
        except DBAPIError:  # a database not migrated yet has no resources to offer
            return
        definitions = [jsonio.loads(s.content) for s in stored if s.content is not None]
        self.interactions.options.registry.use_custom(
            [d for d in definitions if d.get("status") == "active"]
        )

    def handle(self, req: Request) -> tuple[str, Response]:
        """Returns (interaction name, response); the name labels metrics and, later, audit."""
        interaction = "unknown"
        try:
            where = route(req.method, req.path)
            interaction = where.interaction
            if interaction == "batch/transaction":
                response = self.bundles.process(req)
            else:
                transaction = self._read if interaction in READ_ONLY else self._write
                with transaction() as repo:
                    response = self.interactions.run(repo, req, where)
            if interaction not in READ_ONLY and not response.is_error and _touches_parameters(req):
                self.load_search_parameters()
            return interaction, response
        except FhirError as err:
            level = logging.WARNING if err.status < 500 else logging.ERROR
            log.log(level, "%s %s: %s %s", req.method, interaction, err.status, err.code)
            return interaction, error_response(err)
        except DBAPIError as exc:
            if not _transient(exc):
                raise
            # The driver's message can quote statement parameters (resource content): log
            # only the kind of fault.
            log.error("%s %s: database unavailable (%s)", req.method, interaction, _kind(exc))
            return interaction, error_response(Unavailable("The database is unavailable; retry"))


def _touches_parameters(req: Request) -> bool:
    """Did this write create, change or delete a SearchParameter?"""
    if req.path.strip("/").startswith("SearchParameter"):
        return True
    body = req.body
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return any(
            str((e or {}).get("request", {}).get("url", "")).startswith("SearchParameter")
            for e in body.get("entry") or []
            if isinstance(e, dict)
        )
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
