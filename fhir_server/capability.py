"""The CapabilityStatement, generated from what the code actually implements."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from . import models
from .searchparams import Registry

SOFTWARE_VERSION = "0.1.0"

_TYPE_INTERACTIONS = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]


def capability_statement(base: str, registry: Registry, *, max_body_bytes: int) -> dict[str, Any]:
    resources = [
        {
            "type": type_,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
            "interaction": [{"code": code} for code in _TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
            "searchInclude": sorted(
                f"{type_}:{p.code}"
                for p in registry.params(type_).values()
                if p.type == "reference"
            ),
            "searchRevInclude": ["*"],
            "searchParam": [
                {"name": p.code, "definition": p.url, "type": p.type}
                for p in sorted(registry.params(type_).values(), key=lambda p: p.code)
            ],
        }
        for type_ in models.resource_types()
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "publisher": "primage",
        "kind": "instance",
        "software": {"name": "primage", "version": SOFTWARE_VERSION},
        "implementation": {
            "description": "primage FHIR R4B server (request bodies up to "
            f"{max_body_bytes} bytes; JSON only; search by the R4B SearchParameters listed, "
            "chaining, _has, _include and _revinclude; not yet: _sort, composite parameters, "
            ":of-type, :identifier, system-level search)",
            "url": base,
        },
        "fhirVersion": models.FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
            }
        ],
    }
