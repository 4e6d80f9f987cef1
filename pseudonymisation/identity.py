"""The quasi-identifiers of one patient as a site knows them: the gateway's input to linkage.

Read from a FHIR Patient or a DICOM dataset by the gateway; never stored anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    given: tuple[str, ...] = ()  # all given names, as recorded ("Anna-Lena", "Maria José")
    family: tuple[str, ...] = ()  # all family names ("García López", "Müller-Lüdenscheidt")
    birth_date: str | None = None  # ISO 8601 YYYY-MM-DD (or YYYY-MM, YYYY when partial)
    sex: str | None = None  # FHIR administrative gender: male | female | other | unknown
    place_of_birth: str | None = None
    local_id: str | None = None  # the site's own patient id (MRN)
