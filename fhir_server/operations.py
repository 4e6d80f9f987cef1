"""FHIR operations ($name) as data: a table of handlers the router dispatches to.

An operation is registered for a resource type (or "*": every type) and a name; its
handler gets the parsed input parameters (query string or a Parameters body), the instance
it was invoked on (if any) and the caller's site, inside a read transaction, and returns
the response resource (Parameters, a ValueSet, an OperationOutcome, a Bundle ...).

The table's keys are also what the CapabilityStatement declares (`definition` names each
one's OperationDefinition), so the statement lists exactly the operations served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .access import Access
from .errors import InvalidRequest
from .repository import Repository


@dataclass(frozen=True)
class Call:
    type: str
    name: str  # "$expand"
    inputs: Inputs
    instance: dict[str, Any] | None  # the resource of /{type}/{id}/$name
    site: str | None  # the caller's site (None: platform or researcher)
    base: str  # the FHIR base URL the request came to
    # what the caller may do (None: no authorisation): an operation that reads resources of
    # other types than its own checks the caller's scopes on them, as _include does
    access: Access | None = None


Handler = Callable[[Repository, Call], dict[str, Any]]

CORE = "http://hl7.org/fhir/OperationDefinition/"
SDC = "http://hl7.org/fhir/uv/sdc/OperationDefinition/"
# The operations this server serves that the core specification does not define. A core
# operation's canonical follows the spec's own naming: {type}-{name}, `Resource` for "*".
ELSEWHERE: dict[tuple[str, str], str] = {
    ("QuestionnaireResponse", "$extract"): SDC + "QuestionnaireResponse-extract",
    # the same operation (input questionnaire-response) invoked on the Questionnaire
    ("Questionnaire", "$extract"): SDC + "QuestionnaireResponse-extract",
    ("Questionnaire", "$populate"): SDC + "Questionnaire-populate",
}


def definition(type_: str, name: str) -> str:
    """The canonical URL of the OperationDefinition of `name` ("$expand") on `type_`."""
    known = ELSEWHERE.get((type_, name))
    if known is not None:
        return known
    return f"{CORE}{'Resource' if type_ == '*' else type_}-{name.removeprefix('$')}"


class Inputs:
    """An operation's input parameters: names to values (strings, Codings or resources)."""

    def __init__(self, query: list[tuple[str, str]], body: Any) -> None:
        self.values: dict[str, list[Any]] = {}
        for name, value in query:
            if name not in ("_format", "_pretty"):
                self.values.setdefault(name, []).append(value)
        if body is None:
            return
        kind = body.get("resourceType") if isinstance(body, dict) else None
        if isinstance(kind, str) and kind != "Parameters":
            # operations.html: a resource posted as the body is the input named `resource`
            # (how $validate is usually called)
            self.values["resource"] = [body]
            return
        if not isinstance(body, dict) or kind != "Parameters":
            raise InvalidRequest("An operation's body must be a Parameters resource")
        given = body.get("parameter") or []
        if not isinstance(given, list):
            raise InvalidRequest("Parameters.parameter must be a list", ("Parameters.parameter",))
        for p in given:
            name = p.get("name") if isinstance(p, dict) else None
            if not isinstance(name, str):
                raise InvalidRequest("Every Parameters.parameter needs a name", ("Parameters",))
            if "resource" in p:
                value: Any = p["resource"]
            else:
                found = [v for k, v in p.items() if k.startswith("value")]
                if len(found) != 1:
                    raise InvalidRequest(f"Parameter {name[:40]} needs one value[x]", (name,))
                value = found[0]
            self.values.setdefault(name, []).append(value)

    def text(self, name: str) -> str | None:
        values = self.values.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise InvalidRequest(f"Parameter {name} may be given once", (name,))
        value = values[0]
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if not isinstance(value, str):
            raise InvalidRequest(f"Parameter {name} must be a primitive value", (name,))
        return value

    def all_text(self, name: str) -> list[str]:
        return [v for v in self.values.get(name, []) if isinstance(v, str)]

    def integer(self, name: str) -> int | None:
        text = self.text(name)
        if text is None:
            return None
        if not text.isdigit():
            raise InvalidRequest(f"Parameter {name} must be a non-negative integer", (name,))
        return int(text)

    def boolean(self, name: str) -> bool:
        text = self.text(name)
        if text not in (None, "true", "false"):
            raise InvalidRequest(f"Parameter {name} must be true or false", (name,))
        return text == "true"

    def coding(self, name: str) -> dict[str, Any] | None:
        values = self.values.get(name)
        if not values:
            return None
        value = values[0]
        if isinstance(value, str):  # GET: system|code
            system, sep, code = value.rpartition("|")
            return {"system": system, "code": code} if sep else {"code": value}
        if not isinstance(value, dict) or "code" not in value:
            raise InvalidRequest(f"Parameter {name} must be a Coding with a code", (name,))
        return value

    def resource(self, name: str) -> dict[str, Any] | None:
        value = (self.values.get(name) or [None])[0]
        return value if isinstance(value, dict) and "resourceType" in value else None
