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

from fhir.resources.R4B import get_fhir_model_class

from .fhirpath import Extractor, compile_expression, root_keys, top_level_element

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
    single: bool  # at most one value per resource (a top-level element with max 1)


class Registry:
    """Search parameters by resource type and code, compiled per type on first use."""

    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        self._base = definitions
        self._by_base: dict[str, list[dict[str, Any]]] = {}
        self._by_type: dict[str, dict[str, SearchParam]] = {}
        self.generation = 0  # counts the sets of parameters used: what caches compare
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
        self.generation += 1

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
                    _single_valued(type_, definition["expression"]),
                )
        return out


@cache
def _base_definitions() -> tuple[dict[str, Any], ...]:
    bundle = json.loads(DATA.read_text())
    return tuple(entry["resource"] for entry in bundle["entry"])


def base_registry() -> Registry:
    """A registry of the R4B base parameters (each app has its own, to add custom ones)."""
    return Registry(list(_base_definitions()))


def _single_valued(type_: str, expression: str) -> bool:
    """Whether the parameter reads one top-level element of cardinality 0..1 (per the model).

    Then repeated bounds on it (date=ge2020&date=lt2021) may be evaluated on the same value,
    which lets the database use one range scan instead of intersecting two half-table sets.
    """
    name = top_level_element(expression, type_)
    if name is None:
        return False
    try:
        model = get_fhir_model_class(type_)
    except ValueError:
        return False
    fields = [
        f
        for f in model.model_fields.values()
        if f.alias == name
        or (
            isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("one_of_many") == name
        )
    ]
    return bool(fields) and all("List[" not in str(f.annotation) for f in fields)
