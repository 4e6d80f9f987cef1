"""A StructureDefinition's differential compiled once into a tree the validator walks.

Element ids name the tree: `Patient.identifier:researchPseudonym.system` is the child
`system` of the slice `researchPseudonym` of the child `identifier` of the root. Only the
differential is read (the profiles under `profiles/` ship no snapshot): everything the
differential leaves alone is the base R4B definition, which the fhir.resources model checks
before a profile is looked at (`fhir_server/models.py`).

Supported constraint kinds (profiling.html, elementdefinition.html of R4B): min / max,
`type` (the allowed choices of a `[x]` element; `targetProfile` of a Reference; `profile`
of an extension slice), `fixed[x]`, `pattern[x]`, `binding` (required, extensible),
`constraint` (FHIRPath, compiled with fhirpathpy), `slicing` with `value` and `pattern`
discriminators (open, closed; `url` of extension slices from their type profile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fhirpathpy

from ..errors import InvalidRequest

UNBOUNDED = 1 << 30


@dataclass
class Invariant:
    key: str
    severity: str  # error | warning
    human: str
    expression: str
    evaluate: Any  # fhirpathpy's compiled function: resource -> list


@dataclass
class Discriminator:
    type: str  # value | pattern
    path: str  # "$this", "system", "code", "url"


@dataclass
class Node:
    """One element of the profile (or one slice of it)."""

    name: str  # the JSON key, "value[x]" for a choice
    slice_name: str | None = None
    min: int | None = None
    max: int | None = None
    types: tuple[str, ...] = ()  # allowed type codes (choice restriction)
    targets: tuple[str, ...] = ()  # Reference.targetProfile
    profiles: tuple[str, ...] = ()  # type.profile (an extension's definition)
    fixed: tuple[str, Any] | None = None  # ("fixedUri", value)
    pattern: tuple[str, Any] | None = None
    binding: tuple[str, str] | None = None  # (strength, value set url)
    invariants: list[Invariant] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)
    discriminators: tuple[Discriminator, ...] = ()
    closed: bool = False
    slices: dict[str, Node] = field(default_factory=dict)

    @property
    def choice(self) -> bool:
        return self.name.endswith("[x]")


@dataclass
class Profile:
    url: str
    version: str | None
    type: str
    kind: str
    root: Node


def compile_profile(sd: dict[str, Any]) -> Profile:
    """The tree of `sd`'s differential; InvalidRequest for what this validator cannot use."""
    url, type_ = sd.get("url"), sd.get("type")
    if not isinstance(url, str) or not isinstance(type_, str):
        raise InvalidRequest("A StructureDefinition needs url and type")
    root = Node(type_)
    elements = (sd.get("differential") or {}).get("element") or []
    for element in elements:
        id_ = element.get("id") or element.get("path")
        if not isinstance(id_, str):
            raise InvalidRequest(f"{url}: an element without id or path")
        parts = id_.split(".")
        if parts[0] != type_:
            raise InvalidRequest(f"{url}: element {id_} is not in {type_}")
        node = root
        for part in parts[1:]:
            name, _, slice_name = part.partition(":")
            node = node.children.setdefault(name, Node(name))
            if slice_name:
                node = node.slices.setdefault(slice_name, Node(name, slice_name))
        _apply(node, element, url)
    return Profile(url, sd.get("version"), type_, str(sd.get("kind") or ""), root)


def _apply(node: Node, element: dict[str, Any], url: str) -> None:
    if isinstance(element.get("min"), int):
        node.min = element["min"]
    if isinstance(element.get("max"), str):
        node.max = UNBOUNDED if element["max"] == "*" else int(element["max"])
    types = element.get("type") or []
    node.types = tuple(t["code"] for t in types if isinstance(t.get("code"), str))
    node.targets = tuple(p for t in types for p in t.get("targetProfile") or [])
    node.profiles = tuple(p for t in types for p in t.get("profile") or [])
    for key, value in element.items():
        if key.startswith("fixed"):
            node.fixed = (key, value)
        elif key.startswith("pattern"):
            node.pattern = (key, value)
    binding = element.get("binding")
    if isinstance(binding, dict) and binding.get("strength") in ("required", "extensible"):
        node.binding = (binding["strength"], binding.get("valueSet", ""))
    for c in element.get("constraint") or []:
        try:
            evaluate = fhirpathpy.compile(c["expression"])
        except Exception as exc:  # fhirpathpy raises plain exceptions for a parse error
            raise InvalidRequest(
                f"{url}: constraint {c.get('key')} does not parse: {exc}"
            ) from None
        node.invariants.append(
            Invariant(
                c.get("key", ""),
                c.get("severity", "error"),
                c.get("human", ""),
                c["expression"],
                evaluate,
            )
        )
    slicing = element.get("slicing")
    if isinstance(slicing, dict):
        node.discriminators = tuple(
            Discriminator(d["type"], d["path"]) for d in slicing.get("discriminator") or []
        )
        unsupported = [d.type for d in node.discriminators if d.type not in ("value", "pattern")]
        if unsupported:
            raise InvalidRequest(f"{url}: discriminator type {unsupported[0]} is not supported")
        node.closed = slicing.get("rules") == "closed"
