"""The store boundary's last check: nothing that still names a person is stored, whoever
sends it (a site through the gateway, a platform client, an import, a bug).

It looks for direct identifiers only (what the gateway always removes); the gateway's
de-identification is what handles the rest.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from fhir_server.errors import Unprocessable

REFUSED_TYPES = {"Person", "RelatedPerson"}
PATIENT_DIRECT = ("name", "telecom", "address", "photo", "contact")


class FhirGuard:
    def __init__(self, pseudonym_system: str) -> None:
        self.pseudonym_system = pseudonym_system

    def __call__(self, resource: dict[str, Any], path: str | None = None) -> None:
        """`path`: where a contained resource sits (Observation.contained[0])."""
        type_ = resource.get("resourceType")
        path = path or str(type_)
        if type_ in REFUSED_TYPES:
            raise Unprocessable(
                f"{type_} resources identify people: not stored", (path,), code="security"
            )
        contained = resource.get("contained")
        for i, inner in enumerate(contained if isinstance(contained, list) else []):
            if isinstance(inner, dict):  # a Patient or RelatedPerson inside another resource
                self(inner, f"{path}.contained[{i}]")
        if type_ != "Patient":
            return
        found = [f"{path}.{k}" for k in PATIENT_DIRECT if resource.get(k)]
        found += [
            f"{path}.identifier[{i}]"
            for i, ident in enumerate(resource.get("identifier") or [])
            if not isinstance(ident, dict) or ident.get("system") != self.pseudonym_system
        ]
        if found:
            raise Unprocessable(
                "Not stored: the Patient still carries direct identifiers (only the research "
                f"pseudonym, {self.pseudonym_system}, may identify it)",
                tuple(found),
                code="security",
            )


def dicom_identity_removed(ds: Dataset) -> str | None:
    """Why `ds` may not be stored, or None: it must say PatientIdentityRemoved = YES."""
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        return "not de-identified (PatientIdentityRemoved is not YES): send it through the gateway"
    return None
