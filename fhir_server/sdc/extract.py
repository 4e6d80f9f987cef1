"""`$extract` (SDC, https://hl7.org/fhir/uv/sdc/extraction.html): a completed
QuestionnaireResponse becomes a transaction Bundle of the resources its answers record.

- Observation-based: each enabled, answered item with `code` under the
  `sdc-questionnaire-observationExtract` extension (on the item, a group above it or the
  Questionnaire) gives one Observation per answer: `code` from item.code, the value from the
  answer (a decimal or integer with a `questionnaire-unit` as a UCUM Quantity, a Coding as
  a CodeableConcept), the category from `sdc-questionnaire-observation-extract-category`,
  `effectiveDateTime` from the group's date item whose definition is
  Observation.effectiveDateTime, else QuestionnaireResponse.authored.
- Definition-based: a group with `sdc-questionnaire-definitionExtract` (or the legacy
  `itemExtractionContext` valueCode) gives one resource of that type; each answered item
  below it whose `definition` is `<canonical>#Type.path` sets that element (`[x]` takes the
  answer's type), and `sdc-questionnaire-definitionExtractValue` values (`fixed-value`, or a
  FHIRPath `expression` over the response) are set first. A canonical that is a profile, not
  a core definition, is claimed in `meta.profile`; the `fullUrl` sub-extension of
  definitionExtract gives the entry's fullUrl.
  Paths are element ids as a profile writes them: `performed[x].start` (the choice type that
  has the child), `extension:totalDose.url` and `extension:totalDose.value[x]` (one list item
  per slice name, its `url` a fixed value on the group); a decimal or integer answer with a
  `questionnaire-unit` fills a Quantity with that unit.
- Profiles of observation-based items (a local convention, in the spirit of the above): an
  item whose `definition` is `<profile canonical>#Observation.value[x]` makes its
  Observations claim that profile in `meta.profile`, and the item's own
  `sdc-questionnaire-definitionExtractValue` extensions (paths into the same canonical) set
  what the profile needs beyond the answer: a fixed component, `focus`.
- `sdc-questionnaire-extractAllocateId` (on the Questionnaire or an item) allocates a
  `urn:uuid:` per name for the whole extraction, read as `%name` by the expressions above:
  how an extracted Observation refers (`focus`) to the Condition of the same Bundle.

Every resource gets the response's subject; entries are `POST` with `urn:uuid:` fullUrls.
The response must be completed (or amended) and answer every enabled required item: if not,
422 naming the item's linkId. `$extract` writes nothing and checks no profile: the client
POSTs the Bundle to the FHIR base (a site through its gateway, which pseudonymises it like any
write), where each resource is checked against the profiles it claims (422 if it fails one).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import fhirpathpy
from fhir.resources.R4B import get_fhir_model_class

from .. import models
from ..errors import InvalidRequest, Unprocessable
from .forms import (
    ALLOCATE_ID,
    ANSWER_TYPES,
    CORE_DEFINITION,
    DEFINITION_EXTRACT,
    DEFINITION_VALUE,
    EFFECTIVE,
    ITEM_CONTEXT,
    OBSERVATION_CATEGORY,
    OBSERVATION_EXTRACT,
    UNIT,
    Form,
    answers_by_link,
    extension,
    sub_value,
    value_of,
    walk,
)

COMPLETE = ("completed", "amended")


def extract(
    questionnaire: dict[str, Any],
    response: dict[str, Any],
    response_ref: str | None,
    fits: Callable[[dict[str, Any], dict[str, Any]], bool] = lambda item, coding: True,
) -> dict[str, Any]:
    """The transaction Bundle for `response` (see the module doc); `response_ref`, when the
    response is stored, becomes each Observation's derivedFrom; `fits(item, coding)` says
    whether a coded answer is one the item allows."""
    form = check(questionnaire, response, fits)
    subject = response["subject"]
    values = _Values(response, _allocate(questionnaire))
    entries: list[tuple[str | None, dict[str, Any]]] = []
    for group, _ in walk(questionnaire.get("item") or []):
        if _definition_target(group) and form.enabled(group):
            built = _definition_based(form, group, subject, values)
            if built is not None:
                entries.append(built)
    for item, parent in walk(questionnaire.get("item") or []):
        if item.get("type") == "group" or not item.get("code") or not form.enabled(item):
            continue
        if not _observation_extract(form, item):
            continue
        effective = _effective(form, parent) or response.get("authored")
        for answer in form.answers.get(item["linkId"], []):
            obs = _observation(item, answer, subject, effective, response_ref)
            entries.append((None, _claim(item, obs, values)))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full_url or f"urn:uuid:{uuid.uuid4()}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for full_url, resource in entries
        ],
    }
    return bundle


def _allocate(questionnaire: dict[str, Any]) -> dict[str, str]:
    """A new urn:uuid per extractAllocateId name, on the Questionnaire or any item."""
    nodes = [questionnaire, *(i for i, _ in walk(questionnaire.get("item") or []))]
    return {
        ext["valueString"]: f"urn:uuid:{uuid.uuid4()}"
        for node in nodes
        for ext in node.get("extension") or []
        if ext.get("url") == ALLOCATE_ID and isinstance(ext.get("valueString"), str)
    }


class _Values:
    """definitionExtractValue and fullUrl expressions: FHIRPath over the response, the
    allocated ids as %variables."""

    def __init__(self, response: dict[str, Any], ids: dict[str, str]) -> None:
        self.response = response
        self.ids = ids

    def evaluate(self, expression: Any, where: str) -> Any:
        if isinstance(expression, dict):  # an Expression: text/fhirpath only
            if expression.get("language") not in (None, "text/fhirpath"):
                raise InvalidRequest(f"{where}: only text/fhirpath expressions are evaluated")
            expression = expression.get("expression")
        if not isinstance(expression, str):
            raise InvalidRequest(f"{where}: an expression without text")
        try:
            found = fhirpathpy.evaluate(self.response, expression, dict(self.ids))
        except Exception:  # fhirpathpy raises plain exceptions for parse and evaluation faults
            raise InvalidRequest(f"{where}: the expression does not evaluate") from None
        return found[0] if found else None

    def apply(
        self,
        node: dict[str, Any],
        resource: dict[str, Any],
        canonical: str,
        slices: Slices | None = None,
    ) -> None:
        """The definitionExtractValue extensions of `node` (paths into `canonical`)."""
        for ext in node.get("extension") or []:
            if ext.get("url") != DEFINITION_VALUE:
                continue
            path = _path(sub_value(ext, "definition"), canonical)
            if not path:
                continue
            fixed = _sub(ext, "fixed-value")
            if fixed is not None:
                fixed_answer = ("fixed:" + fixed[0].removeprefix("value"), fixed[1])
                set_path(resource, path, fixed_answer, slices)
                continue
            expression = sub_value(ext, "expression")
            if expression is not None:
                value = self.evaluate(expression, f"definitionExtractValue on {node.get('linkId')}")
                if value is not None:
                    set_path(resource, path, ("fixed:String", value), slices)


def _sub(ext: dict[str, Any], name: str) -> tuple[str, Any] | None:
    """(value[x] key, value) of the sub-extension `name`."""
    sub = next((s for s in ext.get("extension") or [] if s.get("url") == name), None)
    return value_of(sub) if sub is not None else None


def _claim(item: dict[str, Any], obs: dict[str, Any], values: _Values) -> dict[str, Any]:
    """An observation-based item's Observation with the profile its `definition` names and
    the item's definitionExtractValue values (see the module doc)."""
    canonical, _, path = (item.get("definition") or "").partition("#")
    if not path.startswith("Observation.") or canonical.startswith(CORE_DEFINITION):
        canonical = CORE_DEFINITION + "Observation"
    else:
        obs = {"resourceType": "Observation", "meta": {"profile": [canonical]}, **obs}
    values.apply(item, obs, canonical)
    return obs


def check(
    questionnaire: dict[str, Any],
    response: dict[str, Any],
    fits: Callable[[dict[str, Any], dict[str, Any]], bool],
) -> Form:
    """The response is complete and fits the Questionnaire: or 422 with the item's linkId."""
    models.validate(response, "QuestionnaireResponse")
    if response.get("status") not in COMPLETE:
        raise Unprocessable(
            "Only a completed QuestionnaireResponse is extracted", ("QuestionnaireResponse.status",)
        )
    reference = (response.get("subject") or {}).get("reference") or ""
    if not reference.startswith("Patient/") and not reference.startswith("urn:uuid:"):
        raise Unprocessable(
            "The QuestionnaireResponse needs a Patient subject", ("QuestionnaireResponse.subject",)
        )
    form = Form(questionnaire, answers_by_link(response))
    for link, answers in form.answers.items():
        item = form.items.get(link)
        if item is None:
            raise Unprocessable(f"Item {link[:64]} is not in the Questionnaire", _at(link))
        allowed = ANSWER_TYPES.get(item.get("type", ""), ())
        for answer in answers:
            found = value_of(answer)
            if found is None or found[0] not in allowed:
                raise Unprocessable(f"Item {link} has an answer of the wrong type", _at(link))
            if found[0] == "valueCoding" and not fits(item, found[1]):
                raise Unprocessable(f"Item {link} has an answer not in its answer set", _at(link))
        if len(answers) > 1 and not item.get("repeats"):
            raise Unprocessable(f"Item {link} does not repeat but has several answers", _at(link))
    for item, _ in walk(questionnaire.get("item") or []):
        if item.get("type") in ("group", "display") or not item.get("required"):
            continue
        if form.enabled(item) and not form.answers.get(item["linkId"]):
            raise Unprocessable(
                f"Item {item['linkId']} is required and has no answer", _at(item["linkId"])
            )
    return form


def _at(link: str) -> tuple[str, ...]:
    return (f"QuestionnaireResponse.item.where(linkId='{link[:64]}')",)


def _observation_extract(form: Form, item: dict[str, Any]) -> bool:
    """The nearest observationExtract on the item, its groups or the Questionnaire."""
    node: dict[str, Any] | None = item
    while node is not None:
        ext = extension(node, OBSERVATION_EXTRACT)
        if ext is not None:
            return ext.get("valueBoolean") is True
        node = form.parents.get(node["linkId"])
    ext = extension(form.questionnaire, OBSERVATION_EXTRACT)
    return ext is not None and ext.get("valueBoolean") is True


def _effective(form: Form, group: dict[str, Any] | None) -> str | None:
    for sibling in (group or {}).get("item") or []:
        if sibling.get("definition") == EFFECTIVE and form.enabled(sibling):
            answer = next(iter(form.answers.get(sibling["linkId"], [])), None)
            if answer is not None:
                found = value_of(answer)
                return found[1] if found else None
    return None


def _observation(
    item: dict[str, Any],
    answer: dict[str, Any],
    subject: dict[str, Any],
    effective: str | None,
    response_ref: str | None,
) -> dict[str, Any]:
    obs: dict[str, Any] = {"resourceType": "Observation", "status": "final"}
    category = extension(item, OBSERVATION_CATEGORY)
    if category is not None:
        obs["category"] = [category["valueCodeableConcept"]]
    obs["code"] = {
        "coding": item["code"],
        "text": item.get("text") or item["code"][0].get("display"),
    }
    obs["subject"] = subject
    if effective:
        obs["effectiveDateTime"] = effective
    if response_ref:
        obs["derivedFrom"] = [{"reference": response_ref}]
    key, value = value_of(answer) or ("", None)
    unit = (extension(item, UNIT) or {}).get("valueCoding")
    if key in _NUMBERS and unit is not None:
        obs["valueQuantity"] = _quantity(value, unit)
    elif key == "valueDecimal":
        obs["valueQuantity"] = {"value": value}
    elif key == "valueCoding":
        obs["valueCodeableConcept"] = {"coding": [value]}
    elif key == "valueDate":
        obs["valueDateTime"] = value
    elif key == "valueUri":
        obs["valueString"] = value
    elif key == "valueReference":
        raise Unprocessable(
            f"Item {item['linkId']}: a Reference is not an Observation value", _at(item["linkId"])
        )
    else:
        obs[key] = value
    return obs


_NUMBERS = ("valueDecimal", "valueInteger")


def _quantity(value: Any, unit: dict[str, Any]) -> dict[str, Any]:
    """A number answer with the item's questionnaire-unit as a (UCUM) Quantity."""
    quantity = {"value": value, "unit": unit.get("display") or unit.get("code")}
    return quantity | {k: unit[k] for k in ("system", "code") if k in unit}


# --- definition-based ---------------------------------------------------------------------


def _definition_target(group: dict[str, Any]) -> tuple[str, str] | None:
    """(canonical, resource type) a group extracts, or None."""
    ext = extension(group, DEFINITION_EXTRACT)
    if ext is not None:
        canonical = sub_value(ext, "definition")
        if not isinstance(canonical, str):
            raise InvalidRequest(f"definitionExtract on {group['linkId']} has no definition")
        return canonical, _type_of(group, canonical)
    legacy = extension(group, ITEM_CONTEXT)
    if legacy is not None and isinstance(legacy.get("valueCode"), str):
        return CORE_DEFINITION + legacy["valueCode"], legacy["valueCode"]
    return None


def _type_of(group: dict[str, Any], canonical: str) -> str:
    for item, _ in walk(group.get("item") or []):
        prefix, sep, path = (item.get("definition") or "").partition("#")
        if sep and prefix == canonical:
            return path.split(".")[0]
    return canonical.rstrip("/").rsplit("/", 1)[-1]


def _definition_based(
    form: Form, group: dict[str, Any], subject: dict[str, Any], values: _Values
) -> tuple[str | None, dict[str, Any]] | None:
    target = _definition_target(group)
    assert target is not None
    canonical, type_ = target
    resource: dict[str, Any] = {"resourceType": type_}
    if not canonical.startswith(CORE_DEFINITION):
        resource["meta"] = {"profile": [canonical]}
    answered = False
    slices: Slices = {}
    values.apply(group, resource, canonical, slices)
    for item, _ in walk(group.get("item") or []):
        path = _path(item.get("definition"), canonical)
        if path is None or not form.enabled(item):
            continue
        unit = (extension(item, UNIT) or {}).get("valueCoding")
        for answer in form.answers.get(item["linkId"], []):
            found = value_of(answer)
            if found is not None and unit is not None and found[0] in _NUMBERS:
                found = ("valueQuantity", _quantity(found[1], unit))
            if found is not None:
                set_path(resource, path, found, slices)
                answered = True
    if not answered:
        return None
    if "subject" in _model_fields(type_):
        resource["subject"] = subject
    elif "patient" in _model_fields(type_):
        resource["patient"] = subject
    ext = extension(group, DEFINITION_EXTRACT)
    full_url = sub_value(ext, "fullUrl") if ext is not None else None
    if full_url is not None:
        full_url = values.evaluate(full_url, f"definitionExtract fullUrl on {group['linkId']}")
    return (full_url if isinstance(full_url, str) else None), resource


def _path(definition: Any, canonical: str) -> list[str] | None:
    if not isinstance(definition, str):
        return None
    prefix, sep, path = definition.partition("#")
    if not sep or prefix != canonical:
        return None
    return path.split(".")[1:]


def _model_fields(type_: str) -> dict[str, Any]:
    try:
        return get_fhir_model_class(type_).model_fields  # type: ignore[no-any-return]
    except (KeyError, ValueError):
        raise InvalidRequest(f"{type_[:64]} is not an R4B type") from None


# A Questionnaire answer type -> the FHIR type names of `[x]` it may fill, in order
_CHOICE = {
    "valueDate": ("Date", "DateTime"),
    "valueDateTime": ("DateTime",),
    "valueCoding": ("CodeableConcept", "Coding"),
    "valueDecimal": ("Quantity", "Decimal"),
    "valueInteger": ("Integer", "Quantity"),
    "valueBoolean": ("Boolean",),
    "valueString": ("String",),
    "valueQuantity": ("Quantity",),
    "valueReference": ("Reference",),
}


Slices = dict[tuple[int, str], dict[str, Any]]  # (id of the list, slice name) -> its item


def set_path(
    resource: dict[str, Any],
    path: list[str],
    answer: tuple[str, Any],
    slices: Slices | None = None,
) -> None:
    """Set resource.<path> from an answer (value[x] key, value), creating the elements on
    the way (the first of a list); the last element is appended to when it is a list.

    Path parts are element names or ids as a profile writes them: `name[x]` takes the type
    the answer fits (before a child: the type that has that child, so `performed[x].start`
    is performedPeriod.start), `name:slice` is one item of a list per slice name, shared by
    the paths that name it in `slices` (`extension:totalDose.url` and
    `extension:totalDose.value[x]` fill one extension)."""
    node, type_ = resource, resource["resourceType"]
    slices = {} if slices is None else slices
    for i, part in enumerate(path):
        fields = _model_fields(type_)
        name, _, slice_name = part.partition(":")
        last = i == len(path) - 1
        if name.endswith("[x]"):
            stem = name[:-3]
            if last:
                fixed = answer[0].partition("fixed:")[2]
                options = (fixed,) if fixed else _CHOICE.get(answer[0], ())
                name = next((stem + o for o in options if stem + o in fields), "")
            else:
                child = path[i + 1].partition(":")[0]
                name = next((f for f in fields if _choice_of(fields, f, stem, child)), "")
        if name not in fields:
            raise InvalidRequest(f"{type_}.{path[i][:64]} is not an element the form can set")
        annotation = str(fields[name].annotation)
        is_list = "List[" in annotation
        found = re.search(r"abc\.(\w+)Type", annotation)
        element_type = found.group(1) if found else None
        if last and not slice_name:
            value = _convert(answer, element_type)
            if is_list:
                node.setdefault(name, []).append(value)
            else:
                node[name] = value
            return
        if element_type is None or (slice_name and not is_list):
            raise InvalidRequest(f"{type_}.{path[i][:64]} has no elements the form can set")
        if is_list:
            children = node.setdefault(name, [])
            if slice_name:
                child_node = slices.get((id(children), slice_name))
                if child_node is None:
                    child_node = slices[(id(children), slice_name)] = {}
                    children.append(child_node)
            else:
                if not children:
                    children.append({})
                child_node = children[0]
            node = child_node
        else:
            node = node.setdefault(name, {})
        type_ = element_type
        if last:  # a whole slice (`extension:totalDose`) set from a fixed value
            node.update(answer[1] if isinstance(answer[1], dict) else {})
            return


def _choice_of(fields: dict[str, Any], field: str, stem: str, child: str) -> bool:
    """`field` is a type of the choice `stem`[x] whose type has the element `child`."""
    if not field.startswith(stem) or not field[len(stem) : len(stem) + 1].isupper():
        return False
    found = re.search(r"abc\.(\w+)Type", str(fields[field].annotation))
    return found is not None and child in _model_fields(found.group(1))


def _convert(answer: tuple[str, Any], element_type: str | None) -> Any:
    key, value = answer
    if key.startswith("fixed:"):
        return value
    if key == "valueCoding" and element_type == "CodeableConcept":
        return {"coding": [value]}
    if key in ("valueDecimal", "valueInteger") and element_type == "Quantity":
        return {"value": value}
    return value
