"""Errors of the FHIR layer, each mapped to one HTTP status and OperationOutcome code.

    FhirError                 (status, issue code)
    +-- InvalidRequest        400 invalid / not-supported / processing
    +-- NotFound              404 not-found
    +-- MethodNotAllowed      405 not-supported (carries the allowed methods)
    +-- NotAcceptable         406 not-supported
    +-- Conflict              409 conflict
    +-- Gone                  410 deleted
    +-- PreconditionFailed    412 conflict
    +-- PayloadTooLarge       413 too-costly
    +-- UnsupportedMediaType  415 not-supported
    +-- Unprocessable         422 processing
    +-- Unavailable           503 transient (carries Retry-After)

Errors carry identifiers (type/id), never the payload that caused them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: str
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, object]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


class FhirError(Exception):
    """Base of all FHIR errors: an HTTP status, an issue code and a message for people."""

    status = 500
    code = "exception"

    def __init__(
        self,
        diagnostics: str,
        expression: tuple[str, ...] = (),
        *,
        issues: list[Issue] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression
        self.issues = issues or []
        if code:
            self.code = code

    def outcome(self) -> dict[str, object]:
        issues = self.issues or [Issue("error", self.code, self.diagnostics, self.expression)]
        return operation_outcome(issues)


class InvalidRequest(FhirError):
    """The request is malformed or asks for something this server does not support."""

    status, code = 400, "invalid"


class NotFound(FhirError):
    """Unknown resource type or id."""

    status, code = 404, "not-found"


class MethodNotAllowed(FhirError):
    """A known path with a method it does not take; carries the allowed methods."""

    status, code = 405, "not-supported"

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not allowed here; allowed: {', '.join(allowed)}")
        self.allowed = allowed


class NotAcceptable(FhirError):
    """No acceptable response format."""

    status, code = 406, "not-supported"


class Conflict(FhirError):
    """The write collides with the current state (for example a duplicate in a transaction)."""

    status, code = 409, "conflict"


class Gone(FhirError):
    """The resource was deleted."""

    status, code = 410, "deleted"


class PreconditionFailed(FhirError):
    """If-Match did not match, or conditional criteria matched more than one resource."""

    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    """The request body exceeds the configured limit."""

    status, code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    """The request body is in a format this server does not read."""

    status, code = 415, "not-supported"


class Unprocessable(FhirError):
    """Well-formed, but not a valid resource (FHIR answers 422 when validation fails)."""

    status, code = 422, "processing"


class Unavailable(FhirError):
    """A transient database fault (lost connection, deadlock): the client may retry."""

    status, code = 503, "transient"

    def __init__(self, diagnostics: str, retry_after: int = 1) -> None:
        super().__init__(diagnostics)
        self.retry_after = retry_after
