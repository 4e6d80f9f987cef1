"""A site's DICOM instance through the gateway: its patient registered with the linkage
service, then the Annex E profile applied with that patient's pseudonym and date offset."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pydicom.dataset import Dataset

from .dicom_deid import DicomPlan, Quarantined, check_burned_in, deidentify
from .gateway import Pseudonyms, derive
from .identity import Identity

SEX = {"M": "male", "F": "female", "O": "other"}


def identity_of(ds: Dataset) -> Identity:
    """The quasi-identifiers a DICOM header carries (PN: family^given^middle^prefix^suffix)."""
    name = ds.get("PatientName")
    family: tuple[str, ...] = ()
    given: tuple[str, ...] = ()
    if name:
        family = tuple(p for p in [name.family_name] if p)
        given = tuple(p for p in [name.given_name, name.middle_name] if p)
    birth = str(ds.get("PatientBirthDate", "") or "")
    iso = f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}" if len(birth) == 8 else None
    return Identity(
        given=given,
        family=family,
        birth_date=iso,
        sex=SEX.get(str(ds.get("PatientSex", "") or "").upper()),
        local_id=str(ds.get("PatientID", "") or "") or None,
    )


class DicomGateway:
    def __init__(
        self,
        pseudonyms: Pseudonyms,
        key: bytes,
        *,
        options: frozenset[str] | None = None,
        patient_name: str = "pseudonym",  # or "empty"
        birth_date: str = "shift",  # or "month"
    ) -> None:
        self.pseudonyms = pseudonyms
        self._uid_key = derive(key, "uid")
        self.options = options
        self.patient_name = patient_name
        self.birth_date = birth_date

    def for_site(self, site: str) -> Callable[[Dataset], Dataset]:
        return lambda ds: self.deidentify(ds, site)

    def deidentify(self, ds: Dataset, site: str) -> Dataset:
        """Raises Quarantined for what must not be stored (burned-in text, no patient)."""
        check_burned_in(ds)
        identity = identity_of(ds)
        if not (identity.family or identity.given or identity.local_id):
            raise Quarantined("no patient name or id to pseudonymise")
        patient = self.pseudonyms.patient(site, identity)
        plan = DicomPlan(  # the engine scrubs free text of the object's own names and ids
            patient_id=patient.research_pseudonym,
            patient_name=patient.research_pseudonym if self.patient_name == "pseudonym" else "",
            date_offset_days=patient.offset_days,
            uid_key=self._uid_key,
            birth_date_policy=self.birth_date,
        )
        if self.options is not None:
            plan = dataclasses.replace(plan, options=self.options)
        return deidentify(ds, plan)
