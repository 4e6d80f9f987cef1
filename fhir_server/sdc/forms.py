"""What `$extract` and `$populate` share: the SDC extension URLs, finding a stored
Questionnaire by canonical, walking its items, the answers of a QuestionnaireResponse by
linkId, and `enableWhen`.

Items are matched by linkId across the whole form (linkIds are unique in a Questionnaire);
a repeating group's repetitions are read as one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .. import access, jsonio
from ..access import Access
from ..errors import InvalidRequest, NotFound
from ..repository import Repository
from ..search.compiler import SearchCompiler
from ..searchparams import Registry
from ..terminology.index import Terminology

SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
OBSERVATION_EXTRACT = SDC + "sdc-questionnaire-observationExtract"
OBSERVATION_CATEGORY = SDC + "sdc-questionnaire-observation-extract-category"
DEFINITION_EXTRACT = SDC + "sdc-questionnaire-definitionExtract"
DEFINITION_VALUE = SDC + "sdc-questionnaire-definitionExtractValue"
ITEM_CONTEXT = SDC + "sdc-questionnaire-itemExtractionContext"  # the legacy valueCode form
ALLOCATE_ID = SDC + "sdc-questionnaire-extractAllocateId"  # SDC 4.0.0: a new fullUrl, by name
UNIT = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
# A date item with this definition gives the effective time of the Observations extracted
# from its group (otherwise they take QuestionnaireResponse.authored).
EFFECTIVE = "http://hl7.org/fhir/StructureDefinition/Observation#Observation.effectiveDateTime"
CORE_DEFINITION = "http://hl7.org/fhir/StructureDefinition/"

# Questionnaire.item.type -> the QuestionnaireResponse answer value[x] it takes
ANSWER_TYPES: dict[str, tuple[str, ...]] = {
    "boolean": ("valueBoolean",),
    "decimal": ("valueDecimal",),
    "integer": ("valueInteger",),
    "date": ("valueDate",),
    "dateTime": ("valueDateTime",),
    "time": ("valueTime",),
    "string": ("valueString",),
    "text": ("valueString",),
    "url": ("valueUri",),
    "choice": ("valueCoding",),
    "open-choice": ("valueCoding", "valueString"),
    "reference": ("valueReference",),
    "quantity": ("valueQuantity",),
}
_SEARCH_LIMIT = 1000


def extension(element: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in element.get("extension") or [] if e.get("url") == url), None)


def sub_value(ext: dict[str, Any], name: str) -> Any:
    """The value[x] of the sub-extension `name` of a complex extension."""
    for sub in ext.get("extension") or []:
        if sub.get("url") == name:
            return next((v for k, v in sub.items() if k.startswith("value")), None)
    return None


def value_of(element: dict[str, Any]) -> tuple[str, Any] | None:
    """(value[x] key, value) of an answer, an answerOption or an extension."""
    return next(((k, v) for k, v in element.items() if k.startswith("value")), None)


def find(
    repo: Repository,
    registry: Registry,
    base: str,
    type_: str,
    params: list[tuple[str, str]],
    grant: Access | None = None,
) -> list[dict[str, Any]]:
    """The current resources of a type matching FHIR search `params` (as the caller's site
    sees them); the caller needs search scope on the type (`grant`), as for a search."""
    access.check(grant, "search-type", [type_])
    compiler = SearchCompiler(registry, base, repo.site, grant)
    criteria = compiler.compile(type_, params, strict=True, default_count=1, max_count=1)
    hits = repo.search_ids(type_, criteria.where, None, _SEARCH_LIMIT)
    return [jsonio.loads(stored.content) for _, stored in hits if stored.content is not None]


def questionnaire(
    repo: Repository, registry: Registry, base: str, canonical: str, grant: Access | None = None
) -> dict[str, Any]:
    """The stored Questionnaire a canonical (`url` or `url|version`) names; the newest
    version by lastUpdated if several share the url."""
    url, _, version = canonical.partition("|")
    params = [("url", url)] + ([("version", version)] if version else [])
    found = find(repo, registry, base, "Questionnaire", params, grant)
    if not found:
        raise NotFound(f"No Questionnaire {canonical[:200]} is stored")
    return max(found, key=lambda q: (q.get("meta") or {}).get("lastUpdated") or "")


def walk(
    items: list[dict[str, Any]], parent: dict[str, Any] | None = None
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Every item, depth first, with its parent item (None at the top)."""
    for item in items or []:
        yield item, parent
        yield from walk(item.get("item") or [], item)


def answers_by_link(response: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """linkId -> the answers given to it, from anywhere in the response (nested items
    under answers included)."""
    out: dict[str, list[dict[str, Any]]] = {}

    def visit(items: list[dict[str, Any]]) -> None:
        for item in items or []:
            link = item.get("linkId")
            answers = item.get("answer") or []
            if isinstance(link, str):
                out.setdefault(link, []).extend(answers)
            visit(item.get("item") or [])
            for answer in answers:
                visit(answer.get("item") or [])

    visit(response.get("item") or [])
    return out


@dataclass
class Form:
    """A Questionnaire with the answers of one response, deciding which items are enabled."""

    questionnaire: dict[str, Any]
    answers: dict[str, list[dict[str, Any]]]

    def __post_init__(self) -> None:
        self.items = {i["linkId"]: i for i, _ in walk(self.questionnaire.get("item") or [])}
        self.parents = {i["linkId"]: p for i, p in walk(self.questionnaire.get("item") or [])}

    def enabled(self, item: dict[str, Any], seen: frozenset[str] = frozenset()) -> bool:
        """enableWhen of the item and of every group it sits in (R4B Questionnaire.item.
        enableWhen, enableBehavior: all unless it says any)."""
        link = item["linkId"]
        if link in seen:  # a cycle: the Questionnaire is at fault; treat as disabled
            return False
        parent = self.parents.get(link)
        if parent is not None and not self.enabled(parent, seen | {link}):
            return False
        conditions = item.get("enableWhen") or []
        if not conditions:
            return True
        results = [self._holds(c, seen | {link}) for c in conditions]
        return any(results) if item.get("enableBehavior") == "any" else all(results)

    def _holds(self, condition: dict[str, Any], seen: frozenset[str]) -> bool:
        question = self.items.get(condition.get("question", ""))
        given = self.answers.get(condition.get("question", ""), [])
        if question is not None and not self.enabled(question, seen):
            given = []
        operator = condition.get("operator")
        expected = next(((k, v) for k, v in condition.items() if k.startswith("answer")), None)
        if expected is None:
            raise InvalidRequest("An enableWhen without answer[x] in the Questionnaire")
        if operator == "exists":
            return bool(given) == bool(expected[1])
        values = [v for a in given if (v := value_of(a)) is not None]
        if operator == "!=":
            return not any(_equal(v, expected) for v in values)
        if operator == "=":
            return any(_equal(v, expected) for v in values)
        return any(_compare(operator, v[1], expected[1]) for v in values)


def _equal(value: tuple[str, Any], expected: tuple[str, Any]) -> bool:
    if isinstance(value[1], dict) and isinstance(expected[1], dict):  # Coding
        keys = ("system", "code") if "system" in expected[1] else ("code",)
        return all(value[1].get(k) == expected[1].get(k) for k in keys)
    return _number(value[1]) == _number(expected[1])


def _compare(operator: str | None, value: Any, expected: Any) -> bool:
    a, b = _number(value), _number(expected)
    try:
        return {
            ">": a > b,
            "<": a < b,
            ">=": a >= b,
            "<=": a <= b,
        }.get(operator or "", False)
    except TypeError:  # incomparable types: the condition does not hold
        return False


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return value
    return Decimal(str(value))


def fits(item: dict[str, Any], coding: dict[str, Any], t: Terminology, site: str | None) -> bool:
    """A coded answer is one of the item's answerOptions, or in its answerValueSet."""
    options = [o["valueCoding"] for o in item.get("answerOption") or [] if "valueCoding" in o]
    if options:
        return any(
            coding.get("system") == o.get("system") and coding.get("code") == o.get("code")
            for o in options
        )
    url = item.get("answerValueSet")
    if not url:
        return True
    value_set = t.value_set(url, site=site)
    ok, _, _ = t.validate_in_value_set(
        value_set, coding.get("system"), coding.get("code", ""), None, site
    )
    return ok
