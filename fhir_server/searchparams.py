"""The search parameters this server supports, loaded from SearchParameter resources.

`data/search-parameters.json` is the R4B base set (see data/README.md for its source);
each parameter gets a compiled extractor per resource type it applies to. A parameter whose
expression is outside the compiled FHIRPath subset, or whose type is not indexed yet, is not
offered: the CapabilityStatement lists exactly what `search()` can evaluate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .fhirpath import Extractor, compile_expression, root_keys

DATA = Path(__file__).parent / "data" / "search-parameters.json"
INDEXED_TYPES = ("token", "string", "date", "number", "quantity", "reference", "uri")
# Answered from the resource table itself rather than from an index.
ON_RESOURCE_TABLE = {"_id", "_lastUpdated"}
NOT_DOMAIN_RESOURCES = {"Bundle", "Binary", "Parameters"}


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str
    url: str
    expression: str
    targets: tuple[str, ...]
    extract: Extractor
    roots: frozenset[str] | None  # top-level keys it reads; None: always evaluate


class Registry:
    """Search parameters by resource type and code, compiled per type on first use."""

    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        self._base = definitions
        self._by_base: dict[str, list[dict[str, Any]]] = {}
        self._by_type: dict[str, dict[str, SearchParam]] = {}
        self.use_custom([])

    def use_custom(self, definitions: list[dict[str, Any]]) -> None:
        """Add the server's own active SearchParameters (profiles/, or POSTed) to the base set.

        A custom parameter with the code of a base one on the same type replaces it.
        """
        by_base: dict[str, list[dict[str, Any]]] = {}
        for definition in [*self._base, *definitions]:
            if definition.get("type") in INDEXED_TYPES and definition.get("expression"):
                for base in definition.get("base", []):
                    by_base.setdefault(base, []).append(definition)
        self._by_base, self._by_type = by_base, {}

    def params(self, type_: str) -> dict[str, SearchParam]:
        found = self._by_type.get(type_)
        if found is None:
            found = self._by_type[type_] = self._compile(type_)
        return found

    def get(self, type_: str, code: str) -> SearchParam | None:
        return self.params(type_).get(code)

    def _compile(self, type_: str) -> dict[str, SearchParam]:
        definitions = list(self._by_base.get("Resource", []))
        if type_ not in NOT_DOMAIN_RESOURCES:
            definitions += self._by_base.get("DomainResource", [])
        definitions += self._by_base.get(type_, [])
        out: dict[str, SearchParam] = {}
        for definition in definitions:
            extract = compile_expression(definition["expression"], type_)
            if extract is not None:
                out[definition["code"]] = SearchParam(
                    definition["code"],
                    definition["type"],
                    definition.get("url", ""),
                    definition["expression"],
                    tuple(definition.get("target", ())),
                    extract,
                    root_keys(definition["expression"], type_),
                )
        return out


@cache
def _base_definitions() -> tuple[dict[str, Any], ...]:
    bundle = json.loads(DATA.read_text())
    return tuple(entry["resource"] for entry in bundle["entry"])


def base_registry() -> Registry:
    """A registry of the R4B base parameters (each app has its own, to add custom ones)."""
    return Registry(list(_base_definitions()))
