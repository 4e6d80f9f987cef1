"""Keeps each stored study's FHIR ImagingStudy (and its Patient and Endpoint) in step.

Runs on the same connection and transaction as the DICOM index writes. The ImagingStudy's
id is the Study Instance UID (a UID is a valid FHIR id: digits and dots, at most 64), so the
mapping needs no lookup table and a re-sync is an idempotent update.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select, text

from fhir_server import jsonio
from fhir_server.repository import Repository
from fhir_server.schema import resource, search_token

from .schema import dicom_instance, dicom_series, dicom_study

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENDPOINT_ID = "dicomweb"
SEX = {"M": "male", "F": "female", "O": "other"}
# PS3.16 Annex L: Body Part Examined defined terms -> SNOMED CT (the ones common here).
BODY_PART = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "BRAIN": ("12738006", "Brain"),
    "CHEST": ("51185008", "Thorax"),
    "HEAD": ("69536005", "Head"),
    "HEADNECK": ("774007", "Head and Neck"),
    "NECK": ("45048000", "Neck"),
    "PELVIS": ("816092008", "Pelvis"),
    "SPINE": ("421060004", "Spine"),
    "WHOLEBODY": ("38266002", "Entire body"),
    "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
}


def sync(
    repo: Repository,
    study_pk: int,
    dicomweb_base: str,
    patient_system: str,
    *,
    configured_base: bool = False,
) -> None:
    """Rewrite the study's ImagingStudy. `configured_base`: the base is the operator's (then
    the Endpoint follows it); otherwise it came from a request and only seeds a missing one."""
    conn = repo.conn
    study = conn.execute(select(dicom_study).where(dicom_study.c.pk == study_pk)).first()
    if study is None:
        return
    repo.site = None
    _endpoint(repo, dicomweb_base, replace=configured_base)  # platform data
    repo.site = study.site  # the study's FHIR resources belong to its site
    patient_id = study.patient_ref or _patient(repo, study, patient_system)
    if study.patient_ref is None:
        conn.execute(
            dicom_study.update().where(dicom_study.c.pk == study_pk), {"patient_ref": patient_id}
        )
    series_rows = conn.execute(
        select(dicom_series)
        .where(dicom_series.c.study_pk == study_pk, dicom_series.c.num_instances > 0)
        .order_by(dicom_series.c.series_number, dicom_series.c.pk)
    ).all()
    members: dict[int, list[dict[str, Any]]] = {s.pk: [] for s in series_rows}
    for row in conn.execute(
        select(
            dicom_instance.c.series_pk,
            dicom_instance.c.sop_uid,
            dicom_instance.c.sop_class_uid,
            dicom_instance.c.instance_number,
        )
        .where(dicom_instance.c.study_pk == study_pk)
        .order_by(dicom_instance.c.instance_number, dicom_instance.c.pk)
    ):
        item: dict[str, Any] = {
            "uid": row.sop_uid,
            "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{row.sop_class_uid}"},
        }
        if row.instance_number is not None and row.instance_number >= 0:
            item["number"] = row.instance_number
        members.setdefault(row.series_pk, []).append(item)
    body: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}],
        "status": "available",
        "subject": {"reference": f"Patient/{patient_id}"},
        "endpoint": [{"reference": f"Endpoint/{ENDPOINT_ID}"}],
        "numberOfSeries": len(series_rows),
        "numberOfInstances": study.num_instances,
    }
    if study.accession_number:
        body["identifier"].append(
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": study.accession_number,
            }
        )
    if started := _date(study.study_date):
        body["started"] = started
    if study.modalities:
        body["modality"] = [{"system": DCM, "code": m} for m in study.modalities.split("\\")]
    if study.study_description:
        body["description"] = study.study_description
    body["series"] = [_series(s, members.get(s.pk, [])) for s in series_rows]
    if not body["series"]:
        del body["series"]
    repo.update(body, study.study_uid)


def remove(repo: Repository, study_uid: str) -> None:
    repo.site = None  # the archive already checked the caller may delete the study
    repo.delete("ImagingStudy", study_uid)


def _series(row: Any, instances: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": row.series_uid,
        "modality": {"system": DCM, "code": row.modality or "OT"},
        "numberOfInstances": row.num_instances,
    }
    if row.series_number is not None and row.series_number >= 0:
        out["number"] = row.series_number
    if row.series_description:
        out["description"] = row.series_description
    if row.body_part:
        code = BODY_PART.get(row.body_part.upper())
        out["bodySite"] = (
            {"system": "http://snomed.info/sct", "code": code[0], "display": code[1]}
            if code
            else {"display": row.body_part}
        )
    if started := _date(row.pps_start_date):
        out["started"] = started
    if instances:
        out["instance"] = instances
    return out


def _date(value: str | None) -> str | None:
    """DICOM DA (YYYYMMDD) as a FHIR date; a time without a UTC offset cannot be used."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return None


def patients_with(system: str, value: str) -> Select:
    """The ids of the live Patients whose identifier is `system|value` (the research
    pseudonym: how DICOM studies find their Patients)."""
    return (
        select(resource.c.id)
        .select_from(search_token.join(resource, resource.c.pk == search_token.c.resource_pk))
        .where(
            search_token.c.type == "Patient",
            search_token.c.param == "identifier",
            search_token.c.code == value,
            search_token.c.system == system,
            resource.c.deleted.is_(False),
        )
    )


def _patient(repo: Repository, study: Any, system: str) -> str:
    """The Patient with the study's Patient ID as identifier, created if there is none."""
    if study.patient_id:
        if repo.conn.dialect.name == "postgresql":  # two studies of one new patient at once
            repo.conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"{system}|{study.patient_id}"},
            )
        found = repo.conn.execute(
            patients_with(system, study.patient_id).where(*repo.visible()).limit(1)
        ).scalar()
        if found:
            return str(found)
    body: dict[str, Any] = {"resourceType": "Patient"}
    if study.patient_id:
        body["identifier"] = [{"system": system, "value": study.patient_id}]
    if study.patient_sex in SEX:
        body["gender"] = SEX[study.patient_sex]
    if birth := _date(study.patient_birth_date):
        body["birthDate"] = birth
    return repo.create(body).id


def _endpoint(repo: Repository, base: str, *, replace: bool) -> None:
    current = repo.current("Endpoint", ENDPOINT_ID)
    live = current is not None and current.content is not None
    if live and (not replace or jsonio.loads(current.content).get("address") == base):
        return
    repo.update(
        {
            "resourceType": "Endpoint",
            "status": "active",
            "name": "primage DICOMweb",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "dicom-wado-rs",
            },
            "payloadType": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                            "code": "DICOM WADO-RS",
                        }
                    ]
                }
            ],
            "payloadMimeType": ["application/dicom"],
            "address": base,
        },
        ENDPOINT_ID,
    )
