"""The FHIR service: route a request, pick its transaction, run it, turn errors into outcomes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

from .bundles import Bundles
from .errors import FhirError
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

    def handle(self, req: Request) -> tuple[str, Response]:
        """Returns (interaction name, response); the name labels metrics and, later, audit."""
        interaction = "unknown"
        try:
            where = route(req.method, req.path)
            interaction = where.interaction
            if interaction == "batch/transaction":
                return interaction, self.bundles.process(req)
            transaction = self._read if interaction in READ_ONLY else self._write
            with transaction() as repo:
                response = self.interactions.run(repo, req, where)
            return interaction, response
        except FhirError as err:
            level = logging.WARNING if err.status < 500 else logging.ERROR
            log.log(level, "%s %s: %s %s", req.method, interaction, err.status, err.code)
            return interaction, error_response(err)
