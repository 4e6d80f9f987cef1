"""The terminology index kept in step with the CodeSystem, ValueSet and ConceptMap
resources stored on this server (see fhir_server/derived.py): a ValueSet POSTed a moment
ago is usable by the next `$expand`, in every worker process.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..derived import Derived
from .index import CodeSystemIndex, Indexed, Terminology, index

TYPES = ("CodeSystem", "ValueSet", "ConceptMap")


class TerminologyStore(Derived[CodeSystemIndex | Indexed, Terminology]):
    def __init__(self) -> None:
        super().__init__(TYPES, index, _assemble)


def _assemble(parts: Iterable[CodeSystemIndex | Indexed]) -> Terminology:
    terminology = Terminology()
    for part in parts:
        terminology.add_indexed(part)
    return terminology
