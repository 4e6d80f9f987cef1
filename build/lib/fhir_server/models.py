"""The R4B resource types and structural validation with fhir.resources.

Validation checks the structure (cardinality, datatypes, primitive formats) against the R4B
models; the client's JSON is what gets stored, never the model's re-dump, because the
re-dump rewrites time precision, offsets, base64 and decimals.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

import fhir.resources.R4B as r4b
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from .errors import InvalidRequest, Issue

FHIR_VERSION = r4b.__fhir_version__


@cache
def resource_types() -> tuple[str, ...]:
    """Every R4B resource type that fhir.resources models (concrete, not abstract bases)."""
    names: set[str] = set()
    for info in pkgutil.iter_modules(r4b.__path__):
        if info.name.startswith("fhirtypes") or info.name in {"fhirprimitiveextension"}:
            continue
        module = importlib.import_module(f"{r4b.__name__}.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Resource)
                and value.__module__ == module.__name__
                and value.__name__ not in {"Resource", "DomainResource"}
            ):
                names.add(value.__name__)
    return tuple(sorted(names))


@cache
def _model(resource_type: str) -> type[Resource] | None:
    try:
        model = get_fhir_model_class(resource_type)
    except ValueError:
        return None
    if not issubclass(model, Resource) or resource_type in {"Resource", "DomainResource"}:
        return None
    return model  # type: ignore[return-value]


def is_resource_type(name: str) -> bool:
    return _model(name) is not None


def validate(resource: Any, resource_type: str | None = None) -> dict[str, Any]:
    """Check `resource` against the R4B model of its type; return it unchanged.

    Raises InvalidRequest (R4B http.html: 400 when a resource "failed basic FHIR
    validation rules") with one issue per fault, located by a FHIRPath-style expression.
    """
    if not isinstance(resource, dict):
        raise InvalidRequest("A resource must be a JSON object", code="structure")
    declared = resource.get("resourceType")
    if not isinstance(declared, str) or _model(declared) is None:
        raise InvalidRequest(
            f"Unknown or missing resourceType {declared!r}"
            if isinstance(declared, str | None)
            else "resourceType must be a string",
            ("resourceType",),
            code="structure",
        )
    if resource_type is not None and declared != resource_type:
        raise InvalidRequest(
            f"resourceType {declared} does not match the endpoint {resource_type}",
            ("resourceType",),
            code="invalid",
        )
    model = _model(declared)
    assert model is not None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise InvalidRequest(
            f"{declared} is not valid: {exc.error_count()} problem(s)",
            issues=[_issue(declared, err) for err in exc.errors(include_url=False)],
        ) from None
    return resource


def _issue(resource_type: str, err: Any) -> Issue:
    path = resource_type
    for part in err["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        elif not str(part).startswith("function-after") and "[" not in str(part):
            path += f".{part}"
    kind = err["type"]
    code = "structure" if kind in {"extra_forbidden", "missing"} else "value"
    message = str(err["msg"]).split("\n")[0].strip()
    return Issue("error", code, f"{path}: {message}", (path,))
