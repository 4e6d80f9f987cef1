"""Compiled extractors for the FHIRPath subset that SearchParameter expressions use.

The R4B base parameters use only: paths, unions (`|`), choice types (`value as Quantity`,
`.as(dateTime)`, `.ofType(...)`), `where(resolve() is Type)`, `where(field='literal')`, and
one `exists() and != false` (Patient.deceased). A general FHIRPath engine costs tens of
microseconds per expression per resource; these closures cost about one, which is what
lets every write index ~30 parameters and still ingest thousands of resources a second.
An expression outside the subset compiles to None and its parameter is not offered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

Extractor = Callable[[dict[str, Any]], list[Any]]

# FHIR datatype names as they appear as choice-type suffixes (valueQuantity, onsetDateTime).
CHOICE_SUFFIXES = frozenset(
    """Base64Binary Boolean Canonical Code Date DateTime Decimal Id Instant Integer Markdown
    Oid PositiveInt String Time UnsignedInt Uri Url Uuid Address Age Annotation Attachment
    CodeableConcept Coding ContactPoint Count Distance Duration HumanName Identifier Money
    Period Quantity Range Ratio Reference SampledData Signature Timing ContactDetail
    Contributor DataRequirement Expression ParameterDefinition RelatedArtifact
    TriggerDefinition UsageContext Dosage Meta CodeableReference RatioRange""".split()  # noqa: SIM905
)
# Element names that are choice elements somewhere in R4B (value[x], effective[x], ...).
CHOICE_NAMES = frozenset(
    json.loads((Path(__file__).parent / "data" / "choice-elements.json").read_text())["names"]
)

_WHERE_RESOLVE = re.compile(r"^where\(resolve\(\) is ([A-Za-z]+)\)$")
_WHERE_EQ = re.compile(r"^where\(([A-Za-z]+) ?= ?'([^']*)'\)$")
_AS_CALL = re.compile(r"^(?:as|ofType)\(([A-Za-z]+)\)$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def compile_expression(expression: str, resource_type: str) -> Extractor | None:
    """An extractor for the union terms of `expression` that apply to `resource_type`.

    Returns None when a term that applies is outside the supported subset, and an extractor
    yielding nothing when no term applies.
    """
    steps_per_term = []
    for term in _split_union(expression):
        parsed = _parse_term(term.strip())
        if parsed is None:
            head = term.strip().lstrip("(").split(".")[0]
            if head in (resource_type, "Resource", "DomainResource"):
                return None
            continue
        head, steps = parsed
        if head in (resource_type, "Resource", "DomainResource"):
            steps_per_term.append(steps)
    if not steps_per_term:
        return _nothing
    compiled = [_compile_steps(steps) for steps in steps_per_term]
    if len(compiled) == 1:
        return compiled[0]

    def union(resource: dict[str, Any]) -> list[Any]:
        out: list[Any] = []
        for fn in compiled:
            out.extend(fn(resource))
        return out

    return union


def _nothing(_resource: dict[str, Any]) -> list[Any]:
    return []


def root_keys(expression: str, resource_type: str) -> frozenset[str] | None:
    """Top-level keys an expression reads on `resource_type`; None when it cannot be told.

    Lets the indexer skip a parameter with one set lookup when its element is absent,
    which is most parameters on most resources.
    """
    keys: set[str] = set()
    for term in _split_union(expression):
        parsed = _parse_term(term.strip())
        if parsed is None:
            return None
        head, steps = parsed
        if head not in (resource_type, "Resource", "DomainResource"):
            continue
        if not steps or steps[0][0] not in {"child", "typed"}:
            return None
        if steps[0][0] == "typed":
            keys.add(steps[0][1] + steps[0][2][0].upper() + steps[0][2][1:])
        elif steps[0][1] in CHOICE_NAMES or steps == [("deceased",)]:
            return None
        else:
            keys.add(steps[0][1])
    return frozenset(keys)


def top_level_element(expression: str, resource_type: str) -> str | None:
    """The one top-level element (JSON name, or choice base) an expression reads, if so."""
    found = []
    for term in _split_union(expression):
        parsed = _parse_term(term.strip())
        if parsed is None:
            return None
        head, steps = parsed
        if head in (resource_type, "Resource", "DomainResource"):
            found.append(steps)
    if len(found) != 1 or len(found[0]) != 1 or found[0][0][0] not in {"child", "typed"}:
        return None
    step = found[0][0]
    return step[1] if step[0] == "child" else step[1] + step[2][0].upper() + step[2][1:]


def _split_union(expression: str) -> list[str]:
    return _split_top(expression, "|")


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and quoted literals."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == sep:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


Step = tuple[str, ...]


def _parse_term(term: str) -> tuple[str, list[Step]] | None:
    if term == "Patient.deceased.exists() and Patient.deceased != false":
        return "Patient", [("deceased",)]
    as_type = None
    if term.startswith("("):
        close = _closing(term)
        if close is None:
            return None
        rest = term[close + 1 :].strip()
        inner = _parse_term(term[1:close].strip())
        if inner is None or (rest and not rest.startswith(".")):
            return None
        if not rest:
            return inner
        tail = _parse_term("X" + rest)
        return None if tail is None else (inner[0], inner[1] + tail[1])
    if " as " in term:
        term, as_type = (p.strip() for p in term.split(" as ", 1))
        if not _NAME.match(as_type):
            return None
    parts = _split_dots(term)
    if not parts or not _NAME.match(parts[0]):
        return None
    steps: list[Step] = []
    for part in parts[1:]:
        if _NAME.match(part):
            steps.append(("child", part))
        elif m := _AS_CALL.match(part):
            if not steps or steps[-1][0] != "child":
                return None
            steps[-1] = ("typed", steps[-1][1], m.group(1))
        elif m := _WHERE_RESOLVE.match(part):
            steps.append(("resolve-is", m.group(1)))
        elif m := _WHERE_EQ.match(part):
            steps.append(("equals", m.group(1), m.group(2)))
        else:
            return None
    if as_type:
        if not steps or steps[-1][0] != "child":
            return None
        steps[-1] = ("typed", steps[-1][1], as_type)
    return parts[0], steps


def _closing(term: str) -> int | None:
    depth = 0
    for i, ch in enumerate(term):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return i
    return None


def _split_dots(term: str) -> list[str]:
    return _split_top(term, ".")


def _compile_steps(steps: list[Step]) -> Extractor:
    if steps == [("deceased",)]:
        return _deceased
    ops = [_op(step) for step in steps]

    def run(resource: dict[str, Any]) -> list[Any]:
        nodes: list[Any] = [resource]
        for op in ops:
            nodes = op(nodes)
            if not nodes:
                break
        return nodes

    return run


def _op(step: Step) -> Callable[[list[Any]], list[Any]]:
    kind = step[0]
    if kind == "child":
        return _child(step[1])
    if kind == "typed":
        name, type_ = step[1], step[2]
        return _child_exact(name + type_[0].upper() + type_[1:])
    if kind == "resolve-is":
        return _resolves_to(step[1])
    return _field_equals(step[1], step[2])


def _add(out: list[Any], value: Any) -> None:
    """FHIRPath flattens: a repeating element contributes each of its items."""
    if isinstance(value, list):
        out.extend(value)
    else:
        out.append(value)


def _child_exact(key: str) -> Callable[[list[Any]], list[Any]]:
    def op(nodes: list[Any]) -> list[Any]:
        out: list[Any] = []
        for node in nodes:
            if isinstance(node, dict) and key in node:
                _add(out, node[key])
        return out

    return op


def _child(name: str) -> Callable[[list[Any]], list[Any]]:
    """A child element; an absent choice element is found by its typed key (effectivePeriod)."""
    if name not in CHOICE_NAMES:
        return _child_exact(name)
    size = len(name)

    def op(nodes: list[Any]) -> list[Any]:
        out: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            if name in node:
                value = node[name]
            else:
                value = next(
                    (
                        v
                        for k, v in node.items()
                        if k.startswith(name) and k[size:] in CHOICE_SUFFIXES
                    ),
                    None,
                )
                if value is None:
                    continue
            _add(out, value)
        return out

    return op


def _resolves_to(type_: str) -> Callable[[list[Any]], list[Any]]:
    """`where(resolve() is Type)` judged from the literal reference, without resolving it."""
    prefix, infix = f"{type_}/", f"/{type_}/"

    def op(nodes: list[Any]) -> list[Any]:
        out = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            ref = node.get("reference")
            if (isinstance(ref, str) and (ref.startswith(prefix) or infix in ref)) or node.get(
                "type"
            ) == type_:
                out.append(node)
        return out

    return op


def _field_equals(field: str, literal: str) -> Callable[[list[Any]], list[Any]]:
    def op(nodes: list[Any]) -> list[Any]:
        return [n for n in nodes if isinstance(n, dict) and n.get(field) == literal]

    return op


def _deceased(resource: dict[str, Any]) -> list[Any]:
    if resource.get("deceasedBoolean") is True or "deceasedDateTime" in resource:
        return [True]
    return [False]
