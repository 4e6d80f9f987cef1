"""FHIR search: parameters from SearchParameter definitions, compiled to SQL."""

from .compiler import Criteria, Include, SearchCompiler

__all__ = ["Criteria", "Include", "SearchCompiler"]
