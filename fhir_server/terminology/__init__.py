"""Terminology: CodeSystem, ValueSet and ConceptMap resources indexed in memory
(`index.py`), kept in step with the store (`store.py`), served as FHIR operations
(`operations.py`)."""

from .index import CodeSystemIndex, Concept, Entry, Match, Terminology
from .operations import Operations, handlers
from .store import TerminologyStore

__all__ = [
    "CodeSystemIndex",
    "Concept",
    "Entry",
    "Match",
    "Operations",
    "Terminology",
    "TerminologyStore",
    "handlers",
]
