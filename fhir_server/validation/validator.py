"""Checking a resource (its JSON) against a compiled profile; issues located by FHIRPath.

Locations are the resource's own JSON paths in FHIRPath form, as the R4B model check
writes them: `Observation.valueCodeableConcept`, `Patient.identifier[1].system`. A missing
element is located at its parent plus its name (`Observation.value` for `value[x]`).
Messages name the rule (element, profile, value set, invariant key), never the value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import Issue, NotFound
from ..terminology import Terminology
from .profile import Node, Profile

Item = tuple[str, Any]  # (location, JSON value)
REFERENCE_TYPES = "http://hl7.org/fhir/StructureDefinition/"


class Validator:
    """One validation run's view: the known profiles and a terminology snapshot."""

    def __init__(
        self,
        profiles: Callable[[str], Profile | None],
        terminology: Terminology,
        site: str | None = None,
    ) -> None:
        self.profiles = profiles
        self.t = terminology
        self.site = site
        self._bindings: dict[tuple[str, str | None, str], bool | None] = {}

    def validate(self, resource: dict[str, Any], profile: Profile) -> list[Issue]:
        issues: list[Issue] = []
        type_ = resource.get("resourceType")
        if type_ != profile.type:
            return [
                Issue(
                    "error",
                    "invalid",
                    f"{profile.url} constrains {profile.type}, not {type_}",
                    ("resourceType",),
                )
            ]
        self._object(profile.root, resource, str(type_), profile, issues, resource)
        return issues

    # --- walking ------------------------------------------------------------------------------

    def _object(
        self,
        node: Node,
        obj: dict[str, Any],
        where: str,
        profile: Profile,
        issues: list[Issue],
        context: Any,
    ) -> None:
        for inv in node.invariants:
            self._invariant(inv, context, where, profile, issues)
        for child in node.children.values():
            key, items = _resolve(obj, child.name, where)
            if key is None:
                shown = f"{where}.{child.name.removesuffix('[x]')}"
                self._element(child, [], shown, profile, issues)
            else:
                self._element(child, items, f"{where}.{key}", profile, issues, key)

    def _element(
        self,
        node: Node,
        items: list[Item],
        where: str,
        profile: Profile,
        issues: list[Issue],
        key: str | None = None,
    ) -> None:
        label = f"{where} ({node.slice_name})" if node.slice_name else where
        if node.min is not None and len(items) < node.min:
            what = f"slice {node.slice_name} of " if node.slice_name else ""
            issues.append(
                Issue(
                    "error",
                    "required",
                    f"{profile.url}: {what}{where} needs at "
                    f"least {node.min} value(s), has {len(items)}",
                    (where,),
                )
            )
        if node.max is not None and len(items) > node.max:
            issues.append(
                Issue(
                    "error",
                    "structure",
                    f"{profile.url}: {label} allows at most {node.max} value(s), has {len(items)}",
                    (where,),
                )
            )
        if node.choice and key is not None and node.types:
            suffix = key[len(node.name) - 3 :]
            if not any(_type_suffix(t) == suffix for t in node.types):
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"{profile.url}: {node.name} must be of type {' or '.join(node.types)}",
                        (where,),
                    )
                )
                return  # the element's other rules are for the types it allows
        for at, value in items:
            self._value(node, at, value, profile, issues)
        if node.slices:
            self._slices(node, items, where, profile, issues, key)

    def _value(
        self, node: Node, at: str, value: Any, profile: Profile, issues: list[Issue]
    ) -> None:
        if node.fixed is not None and value != node.fixed[1]:
            issues.append(
                Issue(
                    "error",
                    "value",
                    f"{profile.url}: {at} must be exactly the {node.fixed[0]} of the profile",
                    (at,),
                )
            )
        if node.pattern is not None and not _contains(value, node.pattern[1]):
            issues.append(
                Issue(
                    "error",
                    "value",
                    f"{profile.url}: {at} does not match the {node.pattern[0]} of the profile",
                    (at,),
                )
            )
        if node.binding is not None:
            self._binding(node.binding, at, value, profile, issues)
        if node.targets and isinstance(value, dict):
            self._reference(node.targets, at, value, profile, issues)
        for url in node.profiles:
            ext = self.profiles(url)
            if ext is not None and ext.type == "Extension" and isinstance(value, dict):
                self._object(ext.root, value, at, ext, issues, value)
        if isinstance(value, dict):
            self._object(node, value, at, profile, issues, value)

    def _slices(
        self,
        node: Node,
        items: list[Item],
        where: str,
        profile: Profile,
        issues: list[Issue],
        key: str | None,
    ) -> None:
        matched: dict[str, list[Item]] = {name: [] for name in node.slices}
        for at, value in items:
            found = next(
                (n for n, s in node.slices.items() if self._in_slice(node, s, value)), None
            )
            if found is not None:
                matched[found].append((at, value))
            elif node.closed:
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"{profile.url}: {at} matches no slice "
                        f"of {node.name} and the slicing is closed",
                        (at,),
                    )
                )
        for name, s in node.slices.items():
            self._element(s, matched[name], where, profile, issues, key)

    def _in_slice(self, node: Node, s: Node, value: Any) -> bool:
        for d in node.discriminators:
            if d.path == "url" and s.profiles:  # an extension slice: its definition's url
                if not isinstance(value, dict) or value.get("url") not in s.profiles:
                    return False
                continue
            target = s
            for part in [] if d.path == "$this" else d.path.split("."):
                target = target.children.get(part, Node(part))
            expected = target.fixed or target.pattern
            if expected is None:
                return False
            actual = _at_path(value, d.path)
            if d.type == "value" and expected is target.fixed:
                if not any(a == expected[1] for a in actual):
                    return False
            elif not any(_contains(a, expected[1]) for a in actual):
                return False
        return True

    # --- rules --------------------------------------------------------------------------------

    def _invariant(
        self, inv: Any, context: Any, where: str, profile: Profile, issues: list[Issue]
    ) -> None:
        try:
            result = inv.evaluate(context, {})
        except Exception:  # fhirpathpy raises plain exceptions on evaluation faults
            issues.append(
                Issue(
                    "error",
                    "invariant",
                    f"{profile.url}: invariant {inv.key} could not be evaluated",
                    (where,),
                )
            )
            return
        if result == [False]:
            issues.append(
                Issue(inv.severity, "invariant", f"{profile.url}: {inv.key}: {inv.human}", (where,))
            )

    def _binding(
        self, binding: tuple[str, str], at: str, value: Any, profile: Profile, issues: list[Issue]
    ) -> None:
        strength, url = binding
        severity = "error" if strength == "required" else "warning"
        codings = list(_codings(value))
        if not codings:
            return  # text only, or nothing codeable: the base model had its say
        results = [self._in_value_set(url, system, code) for system, code in codings]
        if any(results):
            return
        if all(r is None for r in results):
            issues.append(
                Issue(
                    "warning",
                    "not-found",
                    f"{profile.url}: the value set {url} of "
                    f"{at} is not known to this server; not checked",
                    (at,),
                )
            )
            return
        issues.append(
            Issue(
                severity,
                "code-invalid",
                f"{profile.url}: no code of {at} is in the value set {url} ({strength} binding)",
                (at,),
            )
        )

    def _in_value_set(self, url: str, system: str | None, code: str) -> bool | None:
        key = (url, system, code)
        if key not in self._bindings:
            try:
                value_set = self.t.value_set(url, None, self.site)
                ok = self.t.validate_in_value_set(value_set, system, code, None, self.site)[0]
            except NotFound:
                ok = None
            self._bindings[key] = ok
        return self._bindings[key]

    def _reference(
        self,
        targets: tuple[str, ...],
        at: str,
        value: dict[str, Any],
        profile: Profile,
        issues: list[Issue],
    ) -> None:
        ref = value.get("reference")
        if not isinstance(ref, str) or ref.count("/") != 1 or ":" in ref:
            return  # urn:uuid: in a Bundle, absolute URLs, identifiers: not resolved here
        allowed = set()
        for t in targets:
            known = self.profiles(t)
            allowed.add(known.type if known else t.removeprefix(REFERENCE_TYPES))
        if ref.split("/", 1)[0] not in allowed:
            issues.append(
                Issue(
                    "error",
                    "structure",
                    f"{profile.url}: {at} must refer to {' or '.join(sorted(allowed))}",
                    (at,),
                )
            )


def _type_suffix(code: str) -> str:
    return code[:1].upper() + code[1:]


def _resolve(obj: dict[str, Any], name: str, where: str) -> tuple[str | None, list[Item]]:
    """(the key present, its values with their locations) for element `name` in `obj`."""
    key: str | None = name
    if name.endswith("[x]"):
        prefix = name[:-3]
        key = next(
            (k for k in obj if k.startswith(prefix) and k[len(prefix) : len(prefix) + 1].isupper()),
            None,
        )
    if key is None or key not in obj:
        return None, []
    value = obj[key]
    if isinstance(value, list):
        return key, [(f"{where}.{key}[{i}]", v) for i, v in enumerate(value)]
    return key, [(f"{where}.{key}", value)]


def _at_path(value: Any, path: str) -> list[Any]:
    out = [value]
    if path == "$this":
        return out
    for part in path.split("."):
        step: list[Any] = []
        for v in out:
            if isinstance(v, dict) and part in v:
                got = v[part]
                step.extend(got if isinstance(got, list) else [got])
        out = step
    return out


def _contains(value: Any, pattern: Any) -> bool:
    """FHIR pattern matching: every element of the pattern is in the value (lists: each
    pattern item matches some value item); primitives compare equal."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and _contains(value[k], p) for k, p in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(v, p) for v in value) for p in pattern)
    return bool(value == pattern)


def _codings(value: Any) -> Iterator[tuple[str | None, str]]:
    """(system, code) of a CodeableConcept, Coding, Quantity or code."""
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        codings = value.get("coding") if "coding" in value else [value]
        for c in codings if isinstance(codings, list) else []:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                system = c.get("system")
                yield (system if isinstance(system, str) else None), c["code"]
