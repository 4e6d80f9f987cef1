"""The pseudonymisation gateway and linkage service, built from Settings for the app.

The platform runs the gateway in-process for every principal with a site; the linkage
service runs in-process too (on its own database) unless PRIMAGE_LINKAGE_URL points at a
separate one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import orjson
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from dicomweb.errors import Failure
from dicomweb.stow import Transform
from fhir_server.repository import Repository
from pseudonymisation.dicom_deid import Quarantined
from pseudonymisation.dicom_gateway import DicomGateway
from pseudonymisation.fhir_deid import FhirDeidentifier, FhirPolicy
from pseudonymisation.fhir_gateway import FhirGateway, Lookup
from pseudonymisation.gateway import LinkageUnavailable, Pseudonyms
from pseudonymisation.guard import dicom_identity_removed
from pseudonymisation.linkage.client import HttpLinkage, Linkage, LocalLinkage
from pseudonymisation.linkage.schema import create_schema
from pseudonymisation.linkage.service import LinkageService

from . import db
from .settings import Settings


@dataclass
class Gateway:
    pseudonyms: Pseudonyms
    dicom: DicomGateway
    fhir: FhirGateway
    linkage: LinkageService | None  # in-process, with its /identity routes
    linkage_engine: Engine | None

    def date_delta(self, old: str, new: str) -> int:
        """Days that move data shifted for pseudonym `old` to the offset of `new`."""
        return self.pseudonyms.offset(new) - self.pseudonyms.offset(old)

    def dicom_transform(self, site: str) -> Transform:
        """The archive's per-site transformation: quarantines become STOW failures."""

        def transform(ds: Dataset) -> Dataset:
            try:
                return self.dicom.deidentify(ds, site)
            except Quarantined as exc:
                raise Failure(Failure.NOT_AUTHORIZED, f"quarantined: {exc.reason}") from None
            except LinkageUnavailable as exc:  # nothing stored: the site sends it again
                raise Failure(Failure.OUT_OF_RESOURCES, str(exc)) from None

        return transform


def dicom_guard(ds: Dataset) -> None:
    reason = dicom_identity_removed(ds)
    if reason is not None:
        raise Failure(Failure.NOT_AUTHORIZED, reason)


def repository_lookup(
    read: Callable[[], AbstractContextManager[Repository]],
) -> Lookup:
    """The FHIR gateway's view of what a site already stored, in-process."""

    def lookup(site: str, type_: str, id_: str) -> dict[str, Any] | None:
        with read() as repo:
            repo.site = site
            stored = repo.current(type_, id_)
        if stored is None or stored.content is None:
            return None
        return orjson.loads(stored.content)

    return lookup


def build(settings: Settings, read: Callable[[], AbstractContextManager[Repository]]) -> Gateway:
    key = settings.gateway_secret()
    service: LinkageService | None = None
    engine: Engine | None = None
    linkage: Linkage
    if settings.linkage_url:
        token = settings.linkage_token.get_secret_value() if settings.linkage_token else None
        linkage = HttpLinkage(settings.linkage_url, token)
    else:
        engine = db.make_engine(settings.linkage_database(), 5)
        create_schema(engine)
        service = LinkageService(db.writer(engine), settings.linkage_key())
        linkage = LocalLinkage(service)
    pseudonyms = Pseudonyms(linkage, key, settings.gateway_date_shift_days)
    policy_file = settings.gateway_fhir_policy
    policy = FhirPolicy.load(str(policy_file) if policy_file else None)
    fhir = FhirDeidentifier(policy, key, settings.dicom_patient_id_system)
    dicom = DicomGateway(
        pseudonyms,
        key,
        patient_name=settings.gateway_patient_name,
        birth_date="month" if policy.birth_date in ("month", "year") else "shift",
    )
    fhir_gateway = FhirGateway(pseudonyms, fhir, repository_lookup(read))
    return Gateway(pseudonyms, dicom, fhir_gateway, service, engine)
