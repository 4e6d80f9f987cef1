"""The CapabilityStatement, generated from what the code actually implements: the
interactions, the search parameters of the registry, the operations of the router's table
(fhir_server/operations.py) and the profiles stored on the server (fhir_server/validation/)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from . import models
from .operations import definition
from .repository import Repository
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


def capability_statement(
    base: str,
    registry: Registry,
    *,
    max_body_bytes: int,
    operations: Iterable[tuple[str, str]] = (),
    profiles: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """`operations`: the (type or "*", "$name") keys of the operations table; `profiles`:
    the canonical URLs of the stored profiles by the resource type they constrain."""
    served: dict[str, list[tuple[str, str]]] = {}
    for type_, name in operations:
        served.setdefault(type_, []).append((name, definition(type_, name)))
    profiles = profiles or {}
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
            **_operations(served.get(type_, []) + served.get("*", [])),
            **({"supportedProfile": profiles[type_]} if profiles.get(type_) else {}),
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


class Capabilities:
    """The statement served at /metadata. Its per-type part is most of the work (about
    2 ms for 140 types), so it is built once per set of stored profiles (`profiles(repo)`
    returns the same mapping while the store is unchanged) and set of search parameters
    (a SearchParameter stored changes the registry's generation); each request fills in only
    its base URL and the date. Callers must not change the statement they get."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_body_bytes: int,
        operations: Iterable[tuple[str, str]],
        profiles: Callable[[Repository], Mapping[str, list[str]]],
    ) -> None:
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.operations = list(operations)
        self.profiles = profiles
        # (the stored profiles, the registry's generation) it was built for, the statement
        self._built: tuple[tuple[object, int], dict[str, Any]] = ((None, -1), {})

    def __call__(self, repo: Repository, base: str) -> dict[str, Any]:
        key = (self.profiles(repo), self.registry.generation)
        built = self._built
        if built[0][0] is not key[0] or built[0][1] != key[1]:
            statement = capability_statement(
                "",
                self.registry,
                max_body_bytes=self.max_body_bytes,
                operations=self.operations,
                profiles=key[0],
            )
            built = self._built = (key, statement)
        statement = built[1]
        return {
            **statement,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "implementation": {**statement["implementation"], "url": base},
        }


def _operations(served: list[tuple[str, str]]) -> dict[str, Any]:
    if not served:
        return {}
    return {
        "operation": [
            {"name": name.removeprefix("$"), "definition": canonical}
            for name, canonical in sorted(served)
        ]
    }
