"""Putting terminology resources (CodeSystem, ValueSet, ConceptMap and other conformance
resources) into the store as platform data, idempotently by canonical url + version.

A resource keeps the id its file gives it, or gets one derived from its url and version;
when the stored version has the same content (meta aside), nothing is written, so loading
the same files at every start adds no version. A file is one resource, a Bundle of them,
or a directory of such `*.json` files (searched recursively, in name order).

A large CodeSystem (a licensed SNOMED CT release converted to FHIR, ~100 MB) is parsed in
one go by orjson (`jsonio`; about 10x the file in memory while it loads) and stored as one
resource. It is checked against the R4B model only below `VALIDATE_BELOW` bytes (the model
check of a million concepts takes minutes and gigabytes); above that only its shape is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import jsonio, models
from ..errors import Conflict, InvalidRequest
from ..repository import Repository

VALIDATE_BELOW = 5 * 1024 * 1024
LOADABLE = {
    "CodeSystem",
    "ValueSet",
    "ConceptMap",
    "NamingSystem",
    "StructureDefinition",
    "SearchParameter",
    "Questionnaire",
}


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged"
        )


def shipped(mappings: Path) -> list[Path]:
    """What the platform loads at start from `mappings/`: the code system subsets and value
    sets (terminology/) and the ConceptMaps (conceptmaps/); and the cohort e-forms
    (Questionnaires) of `profiles/questionnaires/` beside it; the PRIMAGE profiles
    (`profiles/structuredefinitions/`) and the value sets they bind (`profiles/valuesets/`)."""
    profiles = mappings.parent / "profiles"
    questionnaires = profiles / "questionnaires"
    found = (
        mappings / "terminology",
        mappings / "conceptmaps",
        questionnaires,
        profiles / "valuesets",
        profiles / "structuredefinitions",
    )
    return [p for p in found if p.is_dir()]


def read_all(paths: Iterable[Path]) -> Iterator[tuple[dict[str, Any], int]]:
    for path in paths:
        yield from read(path)


def read(path: Path) -> Iterator[tuple[dict[str, Any], int]]:
    """(resource, size of its file) from a file, a Bundle or a directory of them."""
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    for file in files:
        data = file.read_bytes()
        try:
            document = jsonio.loads(data)
        except jsonio.InvalidJson as exc:
            raise InvalidRequest(f"{file.name}: {exc}") from None
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            for entry in document.get("entry") or []:
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    yield entry["resource"], len(data)
        else:
            yield document, len(data)


def resource_id(body: dict[str, Any]) -> str:
    given = body.get("id")
    if isinstance(given, str) and given:
        return given
    url, version = body.get("url"), body.get("version")
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"A {body.get('resourceType')} to load needs an id or a url")
    return "t-" + hashlib.sha256(f"{url}|{version or ''}".encode()).hexdigest()[:40]


def check(body: Any, size: int) -> dict[str, Any]:
    if not isinstance(body, dict) or body.get("resourceType") not in LOADABLE:
        kind = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise InvalidRequest(f"Only conformance and terminology resources are loaded, not {kind}")
    if size < VALIDATE_BELOW:
        return models.validate(body)
    concepts = body.get("concept")
    if not isinstance(body.get("url"), str) or not isinstance(concepts, list | None):
        raise InvalidRequest("A large resource must carry a url and a concept list")
    return body


def load(
    write: Callable[[], AbstractContextManager[Repository]],
    resources: Iterator[tuple[dict[str, Any], int]],
) -> Report:
    """Store each resource as platform data in its own transaction; see the module doc."""
    report = Report()
    for raw, size in resources:
        body = check(raw, size)
        type_, id_ = body["resourceType"], resource_id(body)
        body = {**body, "id": id_}
        name = f"{type_}/{id_}"
        try:
            with write() as repo:
                repo.site = None  # platform data
                current = repo.current(type_, id_)
                if current is not None and current.content is not None:
                    stored = jsonio.loads(current.content)
                    if _without_meta(stored) == _without_meta(body):
                        report.unchanged.append(name)
                        continue
                repo.update(body, id_)
                (report.updated if current is not None else report.created).append(name)
        except Conflict:  # another process loaded it at the same moment
            report.unchanged.append(name)
    return report


def _without_meta(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "meta"}
