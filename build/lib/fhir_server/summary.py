"""`_summary` and `_elements`: subsets of a resource, marked SUBSETTED (R4B search 3.1.1.6.5).

Which elements are in the summary and which are mandatory comes from the fhir.resources
R4B models (their `summary_element_property` and `element_required` flags, set from the
StructureDefinitions), not from a hand-kept list.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from .errors import InvalidRequest

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
ALWAYS = frozenset({"resourceType", "id", "meta"})
SUMMARY_MODES = {"true", "false", "text", "data", "count"}


@cache
def _fields(type_: str) -> tuple[frozenset[str], frozenset[str], dict[str, str]]:
    """(summary element names, mandatory element names, JSON name -> choice base name)."""
    summary, required, choice = set(), set(), {}
    for field in get_fhir_model_class(type_).model_fields.values():
        extra = field.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        name = field.alias or ""
        if extra.get("summary_element_property"):
            summary.add(name)
        if (
            field.is_required()
            or extra.get("element_required")
            or extra.get("one_of_many_required")
        ):
            required.add(name)
        if isinstance(extra.get("one_of_many"), str):
            choice[name] = extra["one_of_many"]
    return frozenset(summary), frozenset(required), choice


def subset(
    resource: dict[str, Any], summary: str | None, elements: list[str] | None
) -> dict[str, Any]:
    """The resource reduced as asked; unchanged for _summary=false or nothing asked."""
    if (summary in (None, "false")) and not elements:
        return resource
    summary_names, required, choice = _fields(resource["resourceType"])

    def keep(key: str) -> bool:
        bare = key[1:] if key.startswith("_") else key  # primitive extensions follow their value
        if bare in ALWAYS:
            return True
        if summary == "true":
            return bare in summary_names
        if summary == "text":
            return bare == "text" or bare in required
        if summary == "data":
            return bare != "text"
        assert elements is not None
        return bare in required or bare in elements or choice.get(bare) in elements

    out = {k: v for k, v in resource.items() if keep(k)}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


def parse(params: list[tuple[str, str]]) -> tuple[str | None, list[str] | None]:
    summary = elements = None
    for name, value in params:
        if name == "_summary":
            if value not in SUMMARY_MODES:
                raise InvalidRequest("_summary is true, false, text, data or count", ("_summary",))
            summary = value
        elif name == "_elements":
            elements = [e.strip() for e in value.split(",") if e.strip()]
    if summary not in (None, "false") and elements:
        raise InvalidRequest("Use _summary or _elements, not both", ("_elements",))
    return summary, elements
