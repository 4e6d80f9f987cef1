"""The terminology index: CodeSystem, ValueSet and ConceptMap resources (R4B JSON) as
dicts and sets, with no HTTP and no database inside.

    Concept          one code: display, designations, properties, parents and children
    CodeSystemIndex  a code system's concepts; the is-a closure (computed per code, cached)
    Terminology      every indexed resource by canonical url; lookup, subsumes, expand,
                     validate-code and translate on top of them

Hierarchy comes from `concept` nesting and from `parent` / `child` properties (R4B
codesystem.html#hierarchy). In a shipped subset, a concept's parent is its nearest ancestor
that the subset holds. Errors are the FHIR layer's (`NotFound` for an unknown canonical,
`InvalidRequest` for a request that cannot be answered), carrying urls and codes only.
Spec: https://hl7.org/fhir/R4B/terminology-service.html
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..access import may_see
from ..errors import InvalidRequest, NotFound

# R4B ConceptMapEquivalence, and what each means read from target back to source
REVERSED_EQUIVALENCE = {
    "wider": "narrower",
    "narrower": "wider",
    "subsumes": "specializes",
    "specializes": "subsumes",
}
NO_MATCH = {"unmatched", "disjoint"}


@dataclass(slots=True)
class Concept:
    code: str
    display: str | None = None
    definition: str | None = None
    designations: list[dict[str, Any]] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    parents: set[str] = field(default_factory=set)
    children: set[str] = field(default_factory=set)

    @property
    def abstract(self) -> bool:
        return any(
            p.get("code") in ("notSelectable", "abstract") and p.get("valueBoolean") is True
            for p in self.properties
        )

    def property_values(self, code: str) -> list[str]:
        out = []
        for p in self.properties:
            if p.get("code") == code:
                out += [str(v) for k, v in p.items() if k.startswith("value")]
        return out


@dataclass(frozen=True, slots=True)
class Entry:
    """One expansion entry: a coding."""

    system: str
    code: str
    display: str | None
    version: str | None = None
    abstract: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.system}
        if self.version:
            out["version"] = self.version
        if self.abstract:
            out["abstract"] = True
        out["code"] = self.code
        if self.display is not None:
            out["display"] = self.display
        return out


class CodeSystemIndex:
    """One CodeSystem resource, indexed by code."""

    def __init__(self, resource: dict[str, Any], site: str | None = None) -> None:
        self.url: str = resource.get("url") or ""
        self.version: str | None = resource.get("version")
        self.name: str = resource.get("name") or resource.get("title") or self.url
        self.id: str | None = resource.get("id")
        self.content: str = resource.get("content") or "complete"
        self.case_sensitive: bool = resource.get("caseSensitive", True) is not False
        self.site = site
        self.property_types = {
            p["code"]: p.get("type") for p in resource.get("property") or [] if "code" in p
        }
        self.concepts: dict[str, Concept] = {}
        self._folded: dict[str, str] = {}
        self._below: dict[str, frozenset[str]] = {}
        self._above: dict[str, frozenset[str]] = {}
        stack: list[tuple[dict[str, Any], str | None]] = [
            (c, None) for c in reversed(resource.get("concept") or [])
        ]
        while stack:  # nested concepts, iteratively: a deep hierarchy must not recurse
            raw, parent = stack.pop()
            concept = self._add(raw)
            if parent is not None:
                concept.parents.add(parent)
            stack += [(c, concept.code) for c in reversed(raw.get("concept") or [])]
        for concept in list(self.concepts.values()):
            for p in concept.properties:
                if p.get("code") == "parent" and "valueCode" in p:
                    concept.parents.add(p["valueCode"])
                elif p.get("code") == "child" and "valueCode" in p:
                    child = self.concepts.get(p["valueCode"])
                    if child is not None:
                        child.parents.add(concept.code)
        self._position = {code: i for i, code in enumerate(self.concepts)}  # the file's order
        for concept in self.concepts.values():
            concept.parents &= self.concepts.keys()
            for parent in concept.parents:
                self.concepts[parent].children.add(concept.code)
        self.hierarchical = any(c.parents for c in self.concepts.values())

    def _add(self, raw: dict[str, Any]) -> Concept:
        code = raw.get("code")
        if not isinstance(code, str):
            raise InvalidRequest(f"CodeSystem {self.url} has a concept without a code")
        concept = Concept(
            code,
            raw.get("display"),
            raw.get("definition"),
            list(raw.get("designation") or []),
            list(raw.get("property") or []),
        )
        self.concepts[code] = concept
        if not self.case_sensitive:
            self._folded[code.casefold()] = code
        return concept

    def get(self, code: str) -> Concept | None:
        found = self.concepts.get(code)
        if found is None and not self.case_sensitive:
            canonical = self._folded.get(code.casefold())
            found = self.concepts.get(canonical) if canonical else None
        return found

    def require(self, code: str) -> Concept:
        concept = self.get(code)
        if concept is None:
            raise NotFound(f"Code {code[:64]!r} is not in code system {self.url}", code="not-found")
        return concept

    def descendants(self, code: str) -> frozenset[str]:
        """Every code below `code` (not itself), from the hierarchy; cached per code."""
        return self._closure(code, self._below, lambda c: c.children)

    def ancestors(self, code: str) -> frozenset[str]:
        return self._closure(code, self._above, lambda c: c.parents)

    def _closure(self, code: str, cache: dict[str, frozenset[str]], step: Any) -> frozenset[str]:
        found = cache.get(code)
        if found is None:
            seen: set[str] = set()
            todo = list(step(self.concepts[code])) if code in self.concepts else []
            while todo:
                nxt = todo.pop()
                if nxt not in seen:
                    seen.add(nxt)
                    todo += step(self.concepts[nxt])
            seen.discard(code)
            found = cache[code] = frozenset(seen)
        return found

    def subsumes(self, code_a: str, code_b: str) -> str:
        """R4B $subsumes outcome of A against B."""
        a, b = self.require(code_a).code, self.require(code_b).code
        if a == b:
            return "equivalent"
        if b in self.descendants(a):
            return "subsumes"
        if a in self.descendants(b):
            return "subsumed-by"
        return "not-subsumed"

    def entry(self, concept: Concept) -> Entry:
        return Entry(self.url, concept.code, concept.display, self.version, concept.abstract)

    def matching(self, filters: list[dict[str, Any]]) -> Iterator[Concept]:
        """Concepts that meet every ValueSet.compose.include.filter."""
        if not filters:
            yield from self.concepts.values()
            return
        candidates: Iterable[str] | None = None
        checks = []
        for f in filters:
            prop, op, value = f.get("property"), f.get("op"), f.get("value")
            if not isinstance(prop, str) or not isinstance(op, str) or not isinstance(value, str):
                raise InvalidRequest(f"A filter on {self.url} needs property, op and value")
            codes = self._filter_codes(prop, op, value)
            if codes is not None:
                candidates = codes if candidates is None else set(candidates) & codes
            else:
                checks.append(self._filter_check(prop, op, value))
        pool = candidates if candidates is not None else self.concepts.keys()
        for code in sorted(pool, key=self._order) if candidates is not None else pool:
            concept = self.concepts.get(code)
            if concept is not None and all(check(concept) for check in checks):
                yield concept

    def _order(self, code: str) -> int:
        return self._position.get(code, 0)

    def _filter_codes(self, prop: str, op: str, value: str) -> set[str] | None:
        """Filters answered from the hierarchy as a set of codes; None: check each concept."""
        if prop not in ("concept", "code") or op not in (
            "is-a",
            "descendent-of",
            "generalizes",
            "in",
            "=",
        ):
            return None
        if op == "in":
            return {c for c in (v.strip() for v in value.split(",")) if c in self.concepts}
        if value not in self.concepts:
            return set()
        if op == "=":
            return {value}
        if op == "is-a":
            return {value, *self.descendants(value)}
        if op == "descendent-of":
            return set(self.descendants(value))
        return {value, *self.ancestors(value)}  # generalizes

    def _filter_check(self, prop: str, op: str, value: str) -> Any:
        if prop in ("concept", "code"):
            if op == "is-not-a":
                excluded = {value, *self.descendants(value)}
                return lambda c: c.code not in excluded
            if op == "not-in":
                excluded = {v.strip() for v in value.split(",")}
                return lambda c: c.code not in excluded
            if op == "regex":
                pattern = _regex(value)
                return lambda c: pattern.fullmatch(c.code) is not None
        elif prop == "display" and op in ("=", "regex"):
            if op == "=":
                return lambda c: c.display == value
            pattern = _regex(value)
            return lambda c: c.display is not None and pattern.fullmatch(c.display) is not None
        elif op in ("=", "in", "not-in", "exists", "regex"):
            wanted = {v.strip() for v in value.split(",")} if op != "=" else {value}
            if op == "exists":
                present = value == "true"
                return lambda c: bool(c.property_values(prop)) == present
            if op == "regex":
                pattern = _regex(value)
                return lambda c: any(pattern.fullmatch(v) for v in c.property_values(prop))
            if op == "not-in":
                return lambda c: not wanted & set(c.property_values(prop))
            return lambda c: bool(wanted & set(c.property_values(prop)))
        raise InvalidRequest(
            f"Filter {prop} {op} is not supported on {self.url}", code="not-supported"
        )


def _regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error:
        raise InvalidRequest("A filter's regex does not compile") from None


@dataclass(frozen=True, slots=True)
class Indexed:
    """A stored ValueSet or ConceptMap: its JSON and who may see it."""

    url: str
    version: str | None
    resource: dict[str, Any]
    site: str | None


@dataclass(frozen=True, slots=True)
class Match:
    equivalence: str
    system: str | None
    code: str | None
    display: str | None
    source: str  # the ConceptMap's url

    def to_parameter(self) -> dict[str, Any]:
        concept: dict[str, Any] = {}
        if self.system:
            concept["system"] = self.system
        if self.code is not None:
            concept["code"] = self.code
        if self.display is not None:
            concept["display"] = self.display
        parts: list[dict[str, Any]] = [{"name": "equivalence", "valueCode": self.equivalence}]
        if concept:
            parts.append({"name": "concept", "valueCoding": concept})
        parts.append({"name": "source", "valueUri": self.source})
        return {"name": "match", "part": parts}


class Terminology:
    """Every indexed CodeSystem, ValueSet and ConceptMap, by canonical url.

    A `site` argument limits what a lookup may use to platform data and that site's own
    (None: everything, as for a caller without a site)."""

    def __init__(self) -> None:
        self.code_systems: dict[str, list[CodeSystemIndex]] = {}
        self.value_sets: dict[str, list[Indexed]] = {}
        self.concept_maps: dict[str, list[Indexed]] = {}
        self._expansions: dict[tuple[str, str | None, str | None], list[Entry]] = {}
        self._words: dict[Entry, str] = {}  # " word word ..." of each display, for search

    def add(self, resource: dict[str, Any], site: str | None = None) -> None:
        built = index(resource, site)
        if built is not None:
            self.add_indexed(built)

    def add_indexed(self, built: CodeSystemIndex | Indexed) -> None:
        if isinstance(built, CodeSystemIndex):
            self.code_systems.setdefault(built.url, []).append(built)
        else:
            kind = built.resource.get("resourceType")
            table = self.value_sets if kind == "ValueSet" else self.concept_maps
            table.setdefault(built.url, []).append(built)
        self._expansions.clear()

    # --- finding resources ------------------------------------------------------------------

    @staticmethod
    def _pick(candidates: list[Any], version: str | None, site: str | None) -> Any:
        visible = [c for c in candidates if may_see(site, c.site)]
        if version is not None:
            visible = [c for c in visible if c.version == version]
        if not visible:
            return None
        # the latest version by its text: versions here are dates or dotted numbers
        return max(visible, key=lambda c: _version_key(c.version))

    def code_system(
        self, url: str, version: str | None = None, site: str | None = None
    ) -> CodeSystemIndex:
        url, _, pinned = url.partition("|")
        found = self._pick(self.code_systems.get(url, []), version or pinned or None, site)
        if found is None:
            what = f"{url}|{version or pinned}" if version or pinned else url
            raise NotFound(f"Code system {what[:200]} is not known to this server")
        return found  # type: ignore[no-any-return]

    def value_set(
        self, url: str, version: str | None = None, site: str | None = None
    ) -> dict[str, Any]:
        url, _, pinned = url.partition("|")
        found = self._pick(self.value_sets.get(url, []), version or pinned or None, site)
        if found is None:
            raise NotFound(f"Value set {url[:200]} is not known to this server")
        return found.resource  # type: ignore[no-any-return]

    def concept_map(
        self, url: str, version: str | None = None, site: str | None = None
    ) -> dict[str, Any]:
        url, _, pinned = url.partition("|")
        found = self._pick(self.concept_maps.get(url, []), version or pinned or None, site)
        if found is None:
            raise NotFound(f"Concept map {url[:200]} is not known to this server")
        return found.resource  # type: ignore[no-any-return]

    # --- $lookup, $subsumes, $validate-code on a code system --------------------------------

    def lookup(
        self, system: str, code: str, version: str | None = None, site: str | None = None
    ) -> tuple[CodeSystemIndex, Concept]:
        cs = self.code_system(system, version, site)
        return cs, cs.require(code)

    def subsumes(
        self, system: str, code_a: str, code_b: str, version: str | None, site: str | None
    ) -> str:
        return self.code_system(system, version, site).subsumes(code_a, code_b)

    def validate_in_system(
        self,
        system: str,
        code: str,
        display: str | None,
        version: str | None = None,
        site: str | None = None,
    ) -> tuple[bool, str | None, str | None]:
        """(result, message, display) for CodeSystem $validate-code."""
        cs = self.code_system(system, version, site)
        concept = cs.get(code)
        if concept is None:
            return False, f"Unknown code {code[:64]!r} in code system {cs.url}", None
        return _check_display(concept.display, display, concept.designations)

    # --- $expand and ValueSet $validate-code -----------------------------------------------

    def expand(self, value_set: dict[str, Any], site: str | None = None) -> list[Entry]:
        """The full expansion (no text filter, no paging) of a ValueSet resource; cached for
        stored value sets until the index is rebuilt."""
        key = (value_set.get("url") or "", value_set.get("version"), site)
        stored = key[0] and any(i.resource is value_set for i in self.value_sets.get(key[0], []))
        if stored and key in self._expansions:
            return self._expansions[key]
        entries = self._expand(value_set, site, depth=0)
        if stored:
            self._expansions[key] = entries
        return entries

    def _expand(self, value_set: dict[str, Any], site: str | None, depth: int) -> list[Entry]:
        if depth > 10:
            raise InvalidRequest("Value sets include each other too deeply (or in a cycle)")
        compose = value_set.get("compose")
        if not isinstance(compose, dict):
            expansion = value_set.get("expansion")
            if isinstance(expansion, dict):  # a pre-expanded value set
                return [_from_contains(c) for c in _flatten(expansion.get("contains") or [])]
            raise InvalidRequest(
                f"Value set {value_set.get('url', '')[:200]} has no compose to expand",
                code="not-supported",
            )
        out: dict[tuple[str, str], Entry] = {}
        for include in compose.get("include") or []:
            for e in self._component(include, site, depth):
                out.setdefault((e.system, e.code), e)
        for exclude in compose.get("exclude") or []:
            for e in self._component(exclude, site, depth):
                out.pop((e.system, e.code), None)
        return list(out.values())

    def _component(self, comp: dict[str, Any], site: str | None, depth: int) -> list[Entry]:
        """One include or exclude: system (concepts or filters) intersected with valueSets."""
        result: list[Entry] | None = None
        system = comp.get("system")
        if isinstance(system, str):
            concepts, filters = comp.get("concept") or [], comp.get("filter") or []
            version = comp.get("version")
            if concepts:
                try:
                    cs: CodeSystemIndex | None = self.code_system(system, version, site)
                except NotFound:
                    cs = None  # an enumerated list stands on its own
                result = []
                for c in concepts:
                    known = cs.get(c["code"]) if cs is not None else None
                    display = c.get("display") or (known.display if known else None)
                    result.append(
                        Entry(
                            system, c["code"], display, version, known.abstract if known else False
                        )
                    )
            else:
                cs = self.code_system(system, version, site)
                result = [cs.entry(c) for c in cs.matching(filters)]
        for url in comp.get("valueSet") or []:
            nested = self._expand(self.value_set(url, None, site), site, depth + 1)
            if result is None:
                result = nested
            else:
                keep = {(e.system, e.code) for e in nested}
                result = [e for e in result if (e.system, e.code) in keep]
        return result or []

    def search(self, entries: list[Entry], text: str) -> list[Entry]:
        """$expand's filter: every word of `text` starts a word of the display, or `text`
        is the code (case-insensitive)."""
        words = [" " + w for w in _words(text).split()]
        folded = text.casefold()
        out = []
        for e in entries:
            norm = self._words.get(e)
            if norm is None:
                norm = self._words[e] = " " + _words(e.display or "")
            if all(w in norm for w in words) or e.code.casefold() == folded:
                out.append(e)
        return out

    def validate_in_value_set(
        self,
        value_set: dict[str, Any],
        system: str | None,
        code: str,
        display: str | None,
        site: str | None = None,
    ) -> tuple[bool, str | None, str | None]:
        """(result, message, display) for ValueSet $validate-code."""
        url = value_set.get("url", "")
        for entry in self.expand(value_set, site):
            if entry.code == code and (system is None or entry.system == system):
                return _check_display(entry.display, display, [])
        where = f"{system}#{code}" if system else code
        return False, f"The code {where[:200]} is not in the value set {url[:200]}", None

    # --- $translate -------------------------------------------------------------------------

    def translate(
        self,
        system: str,
        code: str,
        *,
        url: str | None = None,
        version: str | None = None,
        source: str | None = None,
        target: str | None = None,
        target_system: str | None = None,
        reverse: bool = False,
        site: str | None = None,
    ) -> list[Match]:
        if url is not None:
            maps = [self.concept_map(url, version, site)]
        else:
            maps = [
                m.resource
                for versions in self.concept_maps.values()
                for m in versions
                if may_see(site, m.site) and _scope_matches(m.resource, source, target, reverse)
            ]
        matches: list[Match] = []
        for cmap in maps:
            for group in cmap.get("group") or []:
                g_source, g_target = group.get("source"), group.get("target")
                if reverse:
                    if g_target != system or (target_system and g_source != target_system):
                        continue
                    for element in group.get("element") or []:
                        for t in element.get("target") or []:
                            if t.get("code") == code:
                                eq = t.get("equivalence", "equivalent")
                                matches.append(
                                    Match(
                                        REVERSED_EQUIVALENCE.get(eq, eq),
                                        g_source,
                                        element.get("code"),
                                        element.get("display"),
                                        cmap.get("url", ""),
                                    )
                                )
                    continue
                if g_source != system or (target_system and g_target != target_system):
                    continue
                for element in group.get("element") or []:
                    if element.get("code") != code:
                        continue
                    for t in element.get("target") or []:
                        matches.append(
                            Match(
                                t.get("equivalence", "equivalent"),
                                g_target if t.get("code") is not None else None,
                                t.get("code"),
                                t.get("display"),
                                cmap.get("url", ""),
                            )
                        )
        return matches


def index(resource: dict[str, Any], site: str | None = None) -> CodeSystemIndex | Indexed | None:
    """One resource, indexed; None when it cannot be referred to (no canonical url)."""
    kind, url = resource.get("resourceType"), resource.get("url")
    if not isinstance(url, str) or not url:
        return None
    if kind == "CodeSystem":
        return CodeSystemIndex(resource, site)
    if kind in ("ValueSet", "ConceptMap"):
        return Indexed(url, resource.get("version"), resource, site)
    return None


def _scope_matches(
    cmap: dict[str, Any], source: str | None, target: str | None, reverse: bool
) -> bool:
    """Does the map's source/target scope (value set canonicals) fit the request?"""
    m_source = cmap.get("sourceUri") or cmap.get("sourceCanonical")
    m_target = cmap.get("targetUri") or cmap.get("targetCanonical")
    if reverse:
        m_source, m_target = m_target, m_source
    return (source is None or source == m_source) and (target is None or target == m_target)


def _check_display(
    known: str | None, given: str | None, designations: list[dict[str, Any]]
) -> tuple[bool, str | None, str | None]:
    if given is None or given == known:
        return True, None, known
    if any(d.get("value") == given for d in designations):
        return True, None, known
    return False, f"The display {given[:200]!r} is not the code's display {known!r}", known


_PUNCTUATION = str.maketrans({c: " " for c in ",;:()[]/-"})


def _words(text: str) -> str:
    return " ".join(text.casefold().translate(_PUNCTUATION).split())


def _flatten(contains: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for c in contains:
        if "code" in c:
            yield c
        yield from _flatten(c.get("contains") or [])


def _from_contains(c: dict[str, Any]) -> Entry:
    return Entry(c.get("system", ""), c["code"], c.get("display"), c.get("version"))


def _version_key(version: str | None) -> tuple[Any, ...]:
    if version is None:
        return ((-1,),)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", version))
