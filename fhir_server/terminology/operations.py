"""The terminology operations as FHIR sees them: input parameters from the query string or
a `Parameters` body, output as `Parameters` (a ValueSet for `$expand`).

    CodeSystem/$lookup          codesystem-operation-lookup.html
    CodeSystem/$validate-code   codesystem-operation-validate-code.html
    CodeSystem/$subsumes        codesystem-operation-subsumes.html
    ValueSet/$expand            valueset-operation-expand.html
    ValueSet/$validate-code     valueset-operation-validate-code.html
    ConceptMap/$translate       conceptmap-operation-translate.html

(all under https://hl7.org/fhir/R4B/). Each also runs on an instance (`/ValueSet/{id}/$expand`),
which names the resource instead of `url`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .. import models
from ..errors import InvalidRequest, NotFound
from ..instant import format_instant
from ..operations import Call, Handler, Inputs
from ..repository import Repository
from .index import Terminology
from .store import TerminologyStore

OPERATIONS: dict[tuple[str, str], str] = {
    ("CodeSystem", "$lookup"): "lookup",
    ("CodeSystem", "$validate-code"): "validate_code_system",
    ("CodeSystem", "$subsumes"): "subsumes",
    ("ValueSet", "$expand"): "expand",
    ("ValueSet", "$validate-code"): "validate_value_set",
    ("ConceptMap", "$translate"): "translate",
}
MAX_EXPANSION = 10_000  # an expansion larger than this needs count (and offset)


def handlers(store: TerminologyStore) -> dict[tuple[str, str], Handler]:
    """The terminology operations, for the router's table (see fhir_server/operations.py)."""

    def handle(repo: Repository, call: Call) -> dict[str, Any]:
        operations = Operations(store.get(repo.conn), call.site)
        return operations.run(call.type, call.name, call.inputs, call.instance)

    return {key: handle for key in OPERATIONS}


class Operations:
    """Runs one terminology operation against a `Terminology` snapshot."""

    def __init__(self, terminology: Terminology, site: str | None) -> None:
        self.t = terminology
        self.site = site

    def run(
        self,
        type_: str,
        name: str,
        inputs: Inputs,
        instance: dict[str, Any] | None,
    ) -> dict[str, Any]:
        method = OPERATIONS.get((type_, name))
        if method is None:
            raise NotFound(
                f"Operation {name[:40]} is not supported on {type_}", code="not-supported"
            )
        handler: Callable[[Inputs, dict[str, Any] | None], dict[str, Any]] = getattr(self, method)
        return handler(inputs, instance)

    # --- CodeSystem -------------------------------------------------------------------------

    def _system_and_code(
        self, inputs: Inputs, instance: dict[str, Any] | None, system_param: str
    ) -> tuple[str, str, str | None]:
        coding = inputs.coding("coding")
        system = inputs.text(system_param) or (coding or {}).get("system")
        code = inputs.text("code") or (coding or {}).get("code")
        if instance is not None:
            system = system or instance.get("url")
        if not system or not code:
            raise InvalidRequest(
                f"Give {system_param} and code (or a coding)", (system_param, "code")
            )
        version = inputs.text("version") or (coding or {}).get("version")
        if instance is not None and version is None:
            version = instance.get("version")
        return system, code, version

    def lookup(self, inputs: Inputs, instance: dict[str, Any] | None) -> dict[str, Any]:
        system, code, version = self._system_and_code(inputs, instance, "system")
        cs, concept = self.t.lookup(system, code, version, self.site)
        wanted = set(inputs.all_text("property"))
        out: list[dict[str, Any]] = [{"name": "name", "valueString": cs.name}]
        if cs.version:
            out.append({"name": "version", "valueString": cs.version})
        out.append({"name": "display", "valueString": concept.display or concept.code})
        if concept.definition and (not wanted or "definition" in wanted):
            out.append({"name": "definition", "valueString": concept.definition})
        if not wanted or "designation" in wanted:
            for d in concept.designations:
                parts = [{"name": k, _value_key(k): v} for k, v in d.items() if k != "extension"]
                out.append({"name": "designation", "part": parts})
        props: list[tuple[str, str, Any]] = []
        for p in concept.properties:
            for key, value in p.items():
                if key.startswith("value"):
                    props.append((p.get("code", ""), key, value))
        props += [("parent", "valueCode", c) for c in sorted(concept.parents)]
        props += [("child", "valueCode", c) for c in sorted(concept.children)]
        seen: set[tuple[str, str]] = set()
        for prop, key, value in props:
            if wanted and prop not in wanted:
                continue
            if (prop, str(value)) in seen:  # a parent both nested and as a property
                continue
            seen.add((prop, str(value)))
            out.append(
                {
                    "name": "property",
                    "part": [{"name": "code", "valueCode": prop}, {"name": "value", key: value}],
                }
            )
        return _parameters(out)

    def validate_code_system(
        self, inputs: Inputs, instance: dict[str, Any] | None
    ) -> dict[str, Any]:
        coding = _coding_of(inputs)
        system = inputs.text("url") or coding.get("system")
        if instance is not None:
            system = system or instance.get("url")
        code = coding.get("code")
        if not system or not code:
            raise InvalidRequest("Give url and code (or a coding)", ("url", "code"))
        version = inputs.text("version") or coding.get("version")
        display = inputs.text("display") or coding.get("display")
        return _validation(*self.t.validate_in_system(system, code, display, version, self.site))

    def subsumes(self, inputs: Inputs, instance: dict[str, Any] | None) -> dict[str, Any]:
        a, b = inputs.coding("codingA"), inputs.coding("codingB")
        code_a = inputs.text("codeA") or (a or {}).get("code")
        code_b = inputs.text("codeB") or (b or {}).get("code")
        system = inputs.text("system") or (a or {}).get("system")
        if instance is not None:
            system = system or instance.get("url")
        if not system or not code_a or not code_b:
            raise InvalidRequest("Give system, codeA and codeB (or codingA and codingB)")
        for c in (a, b):
            if c and c.get("system") not in (None, system):
                raise InvalidRequest("codingA and codingB must be of the same code system")
        version = inputs.text("version")
        outcome = self.t.subsumes(system, code_a, code_b, version, self.site)
        return _parameters([{"name": "outcome", "valueCode": outcome}])

    # --- ValueSet ---------------------------------------------------------------------------

    def _value_set(self, inputs: Inputs, instance: dict[str, Any] | None) -> dict[str, Any]:
        if instance is not None:
            url = instance.get("url")
            if isinstance(url, str):  # the indexed copy: its expansion is cached
                try:
                    indexed = self.t.value_set(url, instance.get("version"), self.site)
                except NotFound:
                    indexed = None
                if indexed is not None and indexed.get("id") == instance.get("id"):
                    return indexed
            return instance
        inline = inputs.resource("valueSet")
        if inline is not None:
            if inline.get("resourceType") != "ValueSet":
                raise InvalidRequest("Parameter valueSet must be a ValueSet", ("valueSet",))
            return models.validate(inline, "ValueSet")  # a malformed compose is a 400
        url = inputs.text("url")
        if not url:
            raise InvalidRequest("Give url (or valueSet, or call the operation on an instance)")
        return self.t.value_set(url, inputs.text("valueSetVersion"), self.site)

    def expand(self, inputs: Inputs, instance: dict[str, Any] | None) -> dict[str, Any]:
        value_set = self._value_set(inputs, instance)
        entries = self.t.expand(value_set, self.site)
        text = inputs.text("filter")
        if text:
            entries = self.t.search(entries, text)
        offset = inputs.integer("offset") or 0
        count = inputs.integer("count")
        if count is None and len(entries) > MAX_EXPANSION:
            raise InvalidRequest(
                f"The expansion has {len(entries)} codes; page it with count and offset",
                ("count",),
                code="too-costly",
            )
        page = entries[offset : offset + count if count is not None else None]
        parameters: list[dict[str, Any]] = []
        for name in ("filter", "count", "offset"):
            value = inputs.text(name)
            if value is not None:
                key = "valueString" if name == "filter" else "valueInteger"
                parameters.append({"name": name, key: value if name == "filter" else int(value)})
        expansion: dict[str, Any] = {
            "identifier": f"urn:uuid:{uuid.uuid4()}",
            "timestamp": format_instant(datetime.now(UTC)),
            "total": len(entries),
            "offset": offset,
        }
        if parameters:
            expansion["parameter"] = parameters
        if page:
            expansion["contains"] = [e.to_json() for e in page]
        out = {k: v for k, v in value_set.items() if k not in ("compose", "expansion", "text")}
        out["resourceType"] = "ValueSet"
        out.pop("meta", None)
        out["expansion"] = expansion
        return out

    def validate_value_set(self, inputs: Inputs, instance: dict[str, Any] | None) -> dict[str, Any]:
        value_set = self._value_set(inputs, instance)
        coding = _coding_of(inputs)
        code = coding.get("code")
        if not code:
            raise InvalidRequest("Give code (with system), coding or codeableConcept", ("code",))
        system = coding.get("system")
        display = inputs.text("display") or coding.get("display")
        return _validation(
            *self.t.validate_in_value_set(value_set, system, code, display, self.site)
        )

    # --- ConceptMap -------------------------------------------------------------------------

    def translate(self, inputs: Inputs, instance: dict[str, Any] | None) -> dict[str, Any]:
        coding = inputs.coding("coding") or {}
        system = inputs.text("system") or coding.get("system")
        code = inputs.text("code") or coding.get("code")
        if not system or not code:
            raise InvalidRequest("Give system and code (or a coding)", ("system", "code"))
        url = inputs.text("url") or (instance.get("url") if instance is not None else None)
        matches = self.t.translate(
            system,
            code,
            url=url,
            version=inputs.text("conceptMapVersion"),
            source=inputs.text("source"),
            target=inputs.text("target"),
            target_system=inputs.text("targetsystem"),
            reverse=inputs.boolean("reverse"),
            site=self.site,
        )
        found = [m for m in matches if m.equivalence not in ("unmatched", "disjoint")]
        out: list[dict[str, Any]] = [{"name": "result", "valueBoolean": bool(found)}]
        if not found:
            out.append(
                {"name": "message", "valueString": f"No mapping for {system[:200]}#{code[:64]}"}
            )
        out += [m.to_parameter() for m in matches]
        return _parameters(out)


def _coding_of(inputs: Inputs) -> dict[str, Any]:
    """code + system (+ version, display), or a coding, or a codeableConcept's first coding."""
    code = inputs.text("code")
    if code is not None:
        out = {"code": code}
        for key, name in (("system", "system"), ("version", "systemVersion")):
            value = inputs.text(name)
            if value is not None:
                out[key] = value
        return out
    coding = inputs.coding("coding")
    if coding is not None:
        return coding
    concept = (inputs.values.get("codeableConcept") or [None])[0]
    if isinstance(concept, dict) and concept.get("coding"):
        first = concept["coding"][0]
        return first if isinstance(first, dict) else {}
    return {}


def _validation(result: bool, message: str | None, display: str | None) -> dict[str, Any]:
    out: list[dict[str, Any]] = [{"name": "result", "valueBoolean": result}]
    if message:
        out.append({"name": "message", "valueString": message})
    if display is not None:
        out.append({"name": "display", "valueString": display})
    return _parameters(out)


def _parameters(parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": parameters}


def _value_key(element: str) -> str:
    return {"language": "valueCode", "use": "valueCoding", "value": "valueString"}.get(
        element, "valueString"
    )
