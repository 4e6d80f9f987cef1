"""`$populate` (SDC, https://hl7.org/fhir/uv/sdc/populate.html): an in-progress
QuestionnaireResponse for a patient, pre-filled from what the platform already holds.

- An item with `code` (observation-based, as `$extract` writes them) takes the value of the
  patient's latest Observation with one of those codes (by effective time, then
  lastUpdated), converted to the item's answer type; a coded answer must be one of the
  item's answerOptions or in its answerValueSet. The group's Observation.effectiveDateTime
  item takes that Observation's effective date.
- A definition-based group (a Condition, a Procedure) takes the patient's latest resource
  of its type whose code fits the group's code item (answerOption or answerValueSet) or
  the group's fixed `code` (definitionExtractValue), and each item reads the element its
  `definition` names; a slice (`extension:totalDose`) is the list item with the group's
  fixed values for it (its `url`).
- A question with neither (a gate such as "Was radiotherapy given?") takes the answer that
  enables an item that was pre-filled, when that enableWhen is `=`.

What the platform does not hold stays unanswered; the response is never stored.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ..instant import format_instant
from ..terminology.index import Terminology
from .extract import _definition_target, _path
from .forms import DEFINITION_VALUE, EFFECTIVE, fits, sub_value, value_of, walk

Finder = Callable[[str, list[tuple[str, str]]], list[dict[str, Any]]]


def populate(
    questionnaire: dict[str, Any],
    patient: str,
    find: Finder,
    terminology: Terminology,
    site: str | None,
) -> dict[str, Any]:
    """The pre-filled QuestionnaireResponse for `patient` ("Patient/id")."""
    filler = _Filler(questionnaire, patient, find, terminology, site)
    answers = filler.fill()
    canonical = questionnaire.get("url", "")
    if questionnaire.get("version"):
        canonical += "|" + questionnaire["version"]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": canonical,
        "status": "in-progress",
        "subject": {"reference": patient},
        "authored": format_instant(datetime.now(UTC)),
        "item": _items(questionnaire.get("item") or [], answers),
    }


class _Filler:
    def __init__(
        self,
        questionnaire: dict[str, Any],
        patient: str,
        find: Finder,
        terminology: Terminology,
        site: str | None,
    ) -> None:
        self.q = questionnaire
        self.patient = patient
        self.find = find
        self.t = terminology
        self.site = site
        self.answers: dict[str, list[dict[str, Any]]] = {}

    def fill(self) -> dict[str, list[dict[str, Any]]]:
        for group, _ in walk(self.q.get("item") or []):
            target = _definition_target(group)
            if target is not None:
                self._from_resource(group, *target)
        for item, parent in walk(self.q.get("item") or []):
            if item.get("type") != "group" and item.get("code"):
                self._from_observation(item, parent)
        for item, _ in walk(self.q.get("item") or []):
            for condition in item.get("enableWhen") or []:
                if item["linkId"] in self.answers and condition.get("operator") == "=":
                    self._gate(condition)
        return self.answers

    # --- observation-based ----------------------------------------------------------------

    def _from_observation(self, item: dict[str, Any], parent: dict[str, Any] | None) -> None:
        codes = ",".join(f"{c.get('system', '')}|{c['code']}" for c in item["code"] if "code" in c)
        found = self.find("Observation", [("subject", self.patient), ("code", codes)])
        found = [o for o in found if o.get("status") not in ("entered-in-error", "cancelled")]
        for obs in sorted(found, key=_when, reverse=True):
            answer = _observation_answer(item, obs)
            if answer is not None and self._allowed(item, answer):
                self.answers[item["linkId"]] = [answer]
                effective = obs.get("effectiveDateTime")
                for sibling in (parent or {}).get("item") or []:
                    if sibling.get("definition") == EFFECTIVE and effective:
                        known = self.answers.get(sibling["linkId"])
                        if not known or known[0]["valueDate"] < effective[:10]:
                            self.answers[sibling["linkId"]] = [{"valueDate": effective[:10]}]
                return

    # --- definition-based -----------------------------------------------------------------

    def _from_resource(self, group: dict[str, Any], canonical: str, type_: str) -> None:
        items = [
            (item, path)
            for item, _ in walk(group.get("item") or [])
            if (path := _path(item.get("definition"), canonical)) is not None
        ]
        if not items:
            return
        fixed = _fixed(group, canonical)
        found = self.find(type_, [("subject", self.patient)])
        for resource in sorted(found, key=_when, reverse=True):
            filled: dict[str, list[dict[str, Any]]] = {}
            fits = _has_codes(resource.get("code"), fixed.get(("code",)))
            for item, path in items:
                answer = next(
                    (
                        a
                        for v in _read(resource, path, fixed)
                        if (a := _answer(item, v)) is not None and self._allowed(item, a)
                    ),
                    None,
                )
                if answer is not None:
                    filled[item["linkId"]] = [answer]
                elif item.get("type") == "choice" and path == ["code"]:
                    fits = False  # not this cohort's diagnosis
            if fits and filled:
                self.answers.update(filled)
                return

    # --- gates and answer sets ------------------------------------------------------------

    def _gate(self, condition: dict[str, Any]) -> None:
        question = condition.get("question", "")
        if question in self.answers:
            return
        for item, _ in walk(self.q.get("item") or []):
            if item["linkId"] == question and not item.get("code") and not item.get("definition"):
                given = next(((k, v) for k, v in condition.items() if k.startswith("answer")), None)
                if given is not None:
                    self.answers[question] = [{"value" + given[0][len("answer") :]: given[1]}]

    def _allowed(self, item: dict[str, Any], answer: dict[str, Any]) -> bool:
        coding = answer.get("valueCoding")
        return coding is None or fits(item, coding, self.t, self.site)


def _fixed(group: dict[str, Any], canonical: str) -> dict[tuple[str, ...], Any]:
    """The group's definitionExtractValue fixed values by path."""
    out: dict[tuple[str, ...], Any] = {}
    for ext in group.get("extension") or []:
        if ext.get("url") != DEFINITION_VALUE:
            continue
        path = _path(sub_value(ext, "definition"), canonical)
        fixed = next((s for s in ext.get("extension") or [] if s.get("url") == "fixed-value"), None)
        found = value_of(fixed) if fixed is not None else None
        if path and found is not None:
            out[tuple(path)] = found[1]
    return out


def _has_codes(stored: Any, fixed: Any) -> bool:
    """A stored CodeableConcept has one of the fixed one's codings (no fixed one: any fits)."""
    if not isinstance(fixed, dict):
        return True
    have = {(c.get("system"), c.get("code")) for c in (stored or {}).get("coding") or []}
    return any((c.get("system"), c.get("code")) in have for c in fixed.get("coding") or [fixed])


def _when(resource: dict[str, Any]) -> tuple[str, str]:
    when = (
        resource.get("effectiveDateTime")
        or (resource.get("effectivePeriod") or {}).get("start")
        or (resource.get("performedPeriod") or {}).get("start")
        or resource.get("performedDateTime")
        or resource.get("onsetDateTime")
        or resource.get("recordedDate")
        or ""
    )
    return when, (resource.get("meta") or {}).get("lastUpdated") or ""


def _observation_answer(item: dict[str, Any], obs: dict[str, Any]) -> dict[str, Any] | None:
    for key in (
        "valueQuantity",
        "valueCodeableConcept",
        "valueInteger",
        "valueBoolean",
        "valueDateTime",
        "valueString",
    ):
        if key in obs:
            return _answer(item, obs[key])
    return None


def _read(
    resource: Any, path: list[str], fixed: dict[tuple[str, ...], Any] | None = None
) -> list[Any]:
    """The values at `path` (a `[x]` name matches any of its types), lists flattened; a
    `name:slice` part keeps the items that have the `fixed` values of that slice's children
    (`extension:totalDose.url`)."""
    nodes = [resource]
    for i, part in enumerate(path):
        name, _, slice_name = part.partition(":")
        found: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            keys = [k for k in node if k.startswith(name[:-3])] if name.endswith("[x]") else [name]
            for key in keys:
                value = node.get(key)
                found.extend(
                    value if isinstance(value, list) else [value] if value is not None else []
                )
        if slice_name:
            prefix = tuple(path[: i + 1])
            wanted = {k[-1]: v for k, v in (fixed or {}).items() if k[:-1] == prefix}
            found = [
                f
                for f in found
                if isinstance(f, dict) and all(f.get(k) == v for k, v in wanted.items())
            ]
        nodes = found
    return nodes


def _answer(item: dict[str, Any], value: Any) -> dict[str, Any] | None:
    """A stored element value as an answer of the item's type, or None if it does not fit."""
    kind = item.get("type")
    if kind in ("choice", "open-choice") and isinstance(value, dict):
        codings = value.get("coding") if "coding" in value else [value]
        return {"valueCoding": codings[0]} if codings else None
    if kind in ("decimal", "integer") and isinstance(value, dict):  # a Quantity
        value = value.get("value")
    if kind == "decimal" and isinstance(value, int | Decimal) and not isinstance(value, bool):
        return {"valueDecimal": value}  # a JsonDecimal keeps its text
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return {"valueInteger": value}
    if kind == "boolean" and isinstance(value, bool):
        return {"valueBoolean": value}
    if kind == "date" and isinstance(value, str):
        return {"valueDate": value[:10]}
    if kind == "dateTime" and isinstance(value, str):
        return {"valueDateTime": value}
    if kind in ("string", "text") and isinstance(value, str):
        return {"valueString": value}
    if kind == "quantity" and isinstance(value, dict):
        return {"valueQuantity": value}
    return None


def _items(
    items: list[dict[str, Any]], answers: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The response's item tree: the Questionnaire's, with only what has answers."""
    out = []
    for item in items:
        if item.get("type") == "group":
            children = _items(item.get("item") or [], answers)
            if children:
                out.append({"linkId": item["linkId"], "text": item.get("text"), "item": children})
        elif item["linkId"] in answers:
            entry: dict[str, Any] = {"linkId": item["linkId"], "answer": answers[item["linkId"]]}
            if item.get("text"):
                entry["text"] = item["text"]
            out.append(entry)
    return [{k: v for k, v in i.items() if v is not None} for i in out]
