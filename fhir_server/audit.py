"""AuditEvent resources (FHIR R4B, after IHE BALP) describing who did what to which data.

The HTTP layer puts an `Actor` on each request; the service turns each interaction into
one AuditEvent and hands it to a sink: in the same transaction as a write, or queued for
reads. Neither the token nor anything from a request body goes into an event; a search's
query string does (base64, as AuditEvent.entity.query prescribes), because which cohort
was searched for is what an audit has to show.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .instant import format_instant

AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
CLIENT_SYSTEM = "urn:primage:oauth-client"
SITE_EXTENSION = "https://primage.eu/fhir/StructureDefinition/audit-agent-site"

# interaction -> (AuditEvent.action, restful-interaction code)
FHIR_INTERACTIONS = {
    "read": ("R", "read"),
    "vread": ("R", "vread"),
    "history-instance": ("R", "history-instance"),
    "history-type": ("R", "history-type"),
    "history-system": ("R", "history-system"),
    "search-type": ("E", "search-type"),
    "search-system": ("E", "search-system"),
    "capabilities": ("R", "capabilities"),
    "create": ("C", "create"),
    "update": ("U", "update"),
    "conditional-update": ("U", "update"),
    "patch": ("U", "patch"),
    "conditional-patch": ("U", "patch"),
    "delete": ("D", "delete"),
    "conditional-delete": ("D", "delete"),
    "transaction": ("E", "transaction"),
    "batch": ("E", "batch"),
}
# DICOMweb service -> (action, DCM code, meaning)
DICOM_SERVICES = {
    "stow": ("C", "110107", "Import"),
    "qido": ("E", "110112", "Query"),
    "wado": ("R", "110103", "DICOM Instances Accessed"),
    "delete": ("D", "110105", "DICOM Study Deleted"),
}


@dataclass(frozen=True)
class Actor:
    """The authenticated caller: OAuth2 client, its site, and the network address."""

    client_id: str
    site: str | None
    address: str | None
    # A site's edge gateway: its writes were pseudonymised at the hospital, not again here
    pseudonymised: bool = False

    @property
    def needs_gateway(self) -> bool:
        """A site's own write, which the platform's gateway must pseudonymise."""
        return bool(self.site) and not self.pseudonymised


Sink = Callable[[Any, dict[str, Any]], None]  # (repository or None, AuditEvent) -> None


def outcome(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (the client's), 8 serious (ours)."""
    return "0" if status < 400 else "4" if status < 500 else "8"


def event(
    actor: Actor,
    subtype: dict[str, str],
    action: str,
    status: int,
    *,
    entities: Iterable[dict[str, Any]] = (),
    recorded: datetime | None = None,
) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "IRCP",
                    "display": "information recipient",
                }
            ]
        },
        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": actor.client_id}},
        "altId": actor.client_id,
        "requestor": True,
    }
    if actor.address:
        agent["network"] = {"address": actor.address, "type": "2"}
    if actor.site:
        agent["extension"] = [{"url": SITE_EXTENSION, "valueCode": actor.site}]
    out: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": AUDIT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [subtype],
        "action": action,
        "recorded": format_instant(recorded or datetime.now(UTC)),
        "outcome": outcome(status),
        "outcomeDesc": f"HTTP {status}",
        "agent": [agent],
        "source": _source(),
    }
    listed = list(entities)
    if listed:
        out["entity"] = listed
    return out


def _source() -> dict[str, Any]:
    return {
        "site": "primage",
        "observer": {"display": "primage"},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }


def fhir_event(
    actor: Actor,
    interaction: str,
    status: int,
    *,
    references: Iterable[str] = (),
    resource_type: str | None = None,
    query: str | None = None,
) -> dict[str, Any]:
    action, code = FHIR_INTERACTIONS.get(interaction, ("E", "operation"))
    entities: list[dict[str, Any]] = [{"what": {"reference": r}} for r in references]
    if query is not None or (resource_type and not entities):
        entity: dict[str, Any] = {}
        if resource_type:
            entity["type"] = {"system": "http://hl7.org/fhir/resource-types", "code": resource_type}
        if query:
            entity["query"] = base64.b64encode(query.encode()).decode()
        entities.append(entity)
    return event(actor, {"system": RESTFUL, "code": code}, action, status, entities=entities)


def dicom_event(
    actor: Actor, service: str, status: int, studies: Iterable[str] = (), query: str | None = None
) -> dict[str, Any]:
    action, code, display = DICOM_SERVICES[service]
    entities: list[dict[str, Any]] = [
        {"what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}}}
        for uid in studies
    ]
    if query:
        entities.append({"query": base64.b64encode(query.encode()).decode()})
    subtype = {"system": DCM, "code": code, "display": display}
    return event(actor, subtype, action, status, entities=entities)


def refused_token_event(address: str | None, method: str, path: str, reason: str) -> dict[str, Any]:
    """A request whose bearer token was refused (bad signature, expired, revoked, ...).

    The token is not recorded, nor who it claims to be (its claims are unverified): only
    where the attempt came from, what it asked for, and why it failed. Requests without
    any token are not audited; they are anonymous and already answered 401."""
    agent: dict[str, Any] = {
        "who": {"display": "unauthenticated"},
        "requestor": True,
    }
    if address:
        agent["network"] = {"address": address, "type": "2"}
    return {
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": DCM, "code": "110122", "display": "Login"}],
        "action": "E",
        "recorded": format_instant(datetime.now(UTC)),
        "outcome": "4",
        "outcomeDesc": f"HTTP 401: {reason}",
        "agent": [agent],
        "source": _source(),
        "entity": [{"name": f"{method} {path}"}],
    }
