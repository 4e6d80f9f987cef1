"""FHIR de-identification by the policy in data/fhir_policy.json, and the free-text scrubber."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any

import pytest

from pseudonymisation.fhir_deid import FhirDeidentifier, FhirPolicy, Refused, shift_date
from pseudonymisation.scrub import Scrubber

SYSTEM = "https://primage.eu/fhir/NamingSystem/research-pseudonym"


@pytest.fixture
def deid() -> FhirDeidentifier:
    return FhirDeidentifier(FhirPolicy.load(), b"k" * 32, SYSTEM)


def test_shift_keeps_precision_time_and_zone() -> None:
    assert shift_date("2020-02-28", 2) == "2020-03-01"
    assert shift_date("2020-03", -40) == "2020-01"
    assert shift_date("2021-06-01T10:30:00+02:00", -1) == "2021-05-31T10:30:00+02:00"
    assert shift_date("2019", 30) == "2019"  # a bare year says too little to move
    assert shift_date("not a date", 3) == "not a date"


def test_patient_keeps_only_what_identifies_no_one(deid: FhirDeidentifier) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "mrn-1",
        "meta": {"versionId": "3", "profile": ["urn:p"]},
        "text": {"status": "generated", "div": "<div>Ana</div>"},
        "identifier": [{"system": "urn:mrn", "value": "mrn-1"}],
        "name": [{"family": "García", "given": ["Ana"]}],
        "telecom": [{"system": "email", "value": "ana@example.org"}],
        "address": [{"city": "Valencia"}],
        "contact": [{"name": {"family": "García"}}],
        "gender": "female",
        "birthDate": "2016-01-20",
        "deceasedDateTime": "2020-05-05T08:00:00Z",
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "Valencia"},
            }
        ],
    }
    out = deid.deidentify(patient, site="s1", offset_days=10, pseudonym="PRM-AAAA-BBBB-C")
    assert out == {
        "resourceType": "Patient",
        "id": deid.resource_id("s1", "Patient", "mrn-1"),
        "meta": {"profile": ["urn:p"]},
        "identifier": [{"system": SYSTEM, "value": "PRM-AAAA-BBBB-C"}],
        "gender": "female",
        "birthDate": "2016-01-30",
        "deceasedDateTime": "2020-05-15T08:00:00Z",
    }
    assert patient["name"][0]["family"] == "García"  # the input is left alone


def test_birth_date_policy_month(deid: FhirDeidentifier) -> None:
    month = FhirDeidentifier(dataclasses.replace(deid.policy, birth_date="month"), b"k", SYSTEM)
    out = month.deidentify(
        {"resourceType": "Patient", "birthDate": "2016-01-30"},
        site="s",
        offset_days=5,
        pseudonym="P",
    )
    assert out["birthDate"] == "2016-02"


def test_references_ids_and_identifiers_are_keyed_per_site(deid: FhirDeidentifier) -> None:
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "identifier": [{"system": "urn:acc", "value": "ACC-77", "assigner": {"display": "X"}}],
        "subject": {"reference": "Patient/mrn-1", "display": "Ana García"},
        "performer": [
            {"display": "Dr. Pérez"},
            {"reference": "https://ehr.example/Practitioner/9"},
        ],
        "hasMember": [{"reference": "Observation/o2/_history/4"}],
        "derivedFrom": [{"reference": "#contained-1"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Height"}]},
    }
    a = deid.deidentify(obs, site="s1", offset_days=None)
    b = deid.deidentify(obs, site="s2", offset_days=None)
    assert a["id"] == deid.resource_id("s1", "Observation", "o1") != b["id"]
    assert a["subject"] == {"reference": f"Patient/{deid.resource_id('s1', 'Patient', 'mrn-1')}"}
    assert "performer" not in a  # a display-only reference and an outside URL say nothing safe
    assert a["hasMember"] == [
        {"reference": f"Observation/{deid.resource_id('s1', 'Observation', 'o2')}"}
    ]
    assert a["derivedFrom"] == [{"reference": f"#{deid.contained_id('s1', 'contained-1')}"}]
    assert a["identifier"][0]["system"] == "urn:acc"
    assert a["identifier"][0]["value"] not in json.dumps(obs)
    assert "assigner" not in a["identifier"][0]
    assert a["code"] == obs["code"]  # codes and their displays are not about the person
    kept = deid.deidentify(obs, site="s1", offset_days=None, keep=lambda t, i: i == "mrn-1")
    assert kept["subject"] == {"reference": "Patient/mrn-1"}  # a platform id stays


def test_free_text_is_scrubbed_and_dates_inside_elements_shift(deid: FhirDeidentifier) -> None:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "effectivePeriod": {"start": "2021-01-01", "end": "2021-01-03T09:00:00Z"},
        "note": [
            {
                "authorString": "Dr. Pérez",
                "time": "2021-01-02",
                "text": "Ana GARCIA seen 02/01/2021, mail ana@example.org, tel +34 961 234 567",
            }
        ],
        "valueString": "MRN 12345678",
    }
    out = deid.deidentify(
        obs, site="s", offset_days=-2, scrubber=Scrubber(["García", "Ana", "12345678"])
    )
    assert out["effectivePeriod"] == {"start": "2020-12-30", "end": "2021-01-01T09:00:00Z"}
    note = out["note"][0]
    assert "authorString" not in note and note["time"] == "2020-12-31"
    assert note["text"] == "*** *** seen ***, mail ***, tel ***"
    assert out["valueString"] == "MRN ***"
    unknown = deid.deidentify(obs, site="s", offset_days=None)  # no names known: dropped
    assert "valueString" not in unknown and unknown["note"] == [{"time": "2021-01-02"}]
    drop = FhirDeidentifier(dataclasses.replace(deid.policy, free_text="drop"), b"k", SYSTEM)
    assert "valueString" not in drop.deidentify(obs, site="s", offset_days=None)


def test_refused_types(deid: FhirDeidentifier) -> None:
    with pytest.raises(Refused):
        deid.deidentify({"resourceType": "RelatedPerson"}, site="s", offset_days=None)


def test_contained_resources_keep_their_links_and_lose_what_identifies(
    deid: FhirDeidentifier,
) -> None:
    obs = {
        "resourceType": "Observation",
        "contained": [
            {
                "resourceType": "Practitioner",
                "id": "pr1",
                "name": [{"family": "Pérez"}],
                "text": {"status": "generated", "div": "<div>Dr Pérez</div>"},
            }
        ],
        "performer": [{"reference": "#pr1"}],
    }
    out = deid.deidentify(obs, site="s", offset_days=3)
    assert out["contained"] == [{"resourceType": "Practitioner", "id": out["contained"][0]["id"]}]
    assert out["performer"] == [{"reference": f"#{out['contained'][0]['id']}"}]  # still resolves
    for refused in (
        {"resourceType": "RelatedPerson", "id": "rp", "name": [{"family": "García"}]},
        {"resourceType": "Patient", "id": "p", "birthDate": "2016-01-20"},  # no offset of its own
    ):
        with pytest.raises(Refused):
            deid.deidentify(
                {"resourceType": "Observation", "contained": [refused]}, site="s", offset_days=3
            )
    with pytest.raises(Refused):  # any resource inside another one
        deid.deidentify(
            {"resourceType": "Parameters", "parameter": [{"name": "p", "resource": refused}]},
            site="s",
            offset_days=3,
        )


def test_people_and_documents_are_found_by_shape_wherever_they_sit(
    deid: FhirDeidentifier,
) -> None:
    doc = {
        "resourceType": "DocumentReference",
        "status": "current",
        "extension": [
            {"url": "urn:x:mother", "valueHumanName": {"family": "García", "given": ["Rosa"]}},
            {"url": "urn:x:home", "valueAddress": {"line": ["Calle Mayor 1"]}},
            {"url": "urn:x:tel", "valueContactPoint": {"system": "phone", "value": "961234567"}},
            {"url": "urn:x:ok", "valueCode": "a"},
        ],
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "data": "QW5hIEdhcmPDrWE=",
                    "url": "https://ehr.example/docs/ana-garcia.pdf",
                    "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
                    "title": "Report for Ana García",
                    "creation": "2021-01-01",
                }
            }
        ],
        "context": {
            "related": [{"identifier": {"system": "urn:acc", "value": "ACC-1"}}],
            "sourcePatientInfo": {"display": "Ana García"},
        },
        "section": {"text": {"status": "generated", "div": "<div>Ana García</div>"}},
    }
    out = deid.deidentify(doc, site="s", offset_days=2, scrubber=Scrubber(["Ana García"]))
    assert out["extension"] == [{"url": "urn:x:ok", "valueCode": "a"}]
    assert out["content"] == [
        {
            "attachment": {
                "contentType": "application/pdf",
                "title": "Report for *** ***",
                "creation": "2021-01-03",
            }
        }
    ]
    assert "section" not in out and "sourcePatientInfo" not in out["context"]
    request = deid.deidentify(
        {"resourceType": "ServiceRequest", "requisition": {"system": "urn:acc", "value": "A-7"}},
        site="s",
        offset_days=None,
    )
    assert request["requisition"]["value"] == deid.identifier_value("s", "urn:acc", "A-7")
    coverage = deid.deidentify(
        {"resourceType": "Coverage", "subscriberId": "INS-998877"}, site="s", offset_days=None
    )
    assert "subscriberId" not in coverage


def test_a_malformed_date_is_refused_not_a_server_error(deid: FhirDeidentifier) -> None:
    with pytest.raises(Refused):
        deid.deidentify(
            {"resourceType": "Observation", "effectiveDateTime": "2021-02-30"},
            site="s",
            offset_days=4,
        )


def test_policy_values_are_checked(tmp_path: Any) -> None:
    shipped = resources.files("pseudonymisation").joinpath("data/fhir_policy.json")
    raw = json.loads(shipped.read_text())
    raw["dates"] = "blur"
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="dates"):
        FhirPolicy.load(str(path))


def test_scrubber_folds_case_and_diacritics() -> None:
    scrub = Scrubber(["Müller^Zoë", "MRN-77"])
    assert scrub.clean("MULLER, zoe: Müller") == "***, ***: ***"
    assert scrub.clean("Mullerova is someone else") == "Mullerova is someone else"
    assert Scrubber().clean("born 2015-03-04") == "born ***"


def test_scrubber_takes_each_part_of_a_double_name() -> None:
    scrub = Scrubber(["Müller-Lüdenscheidt^Anna-Lena", "MRN-77"])
    assert scrub.clean("Frau Müller (Anna), 77 mm, MRN-77") == "Frau *** (***), 77 mm, ***"


def test_text_below_the_top_is_free_text(deid: FhirDeidentifier) -> None:
    med = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": {"text": "as Dr. Pérez told Ana García"},
        "dosage": [{"text": "Ana: 5 mg daily"}],
    }
    known = deid.deidentify(med, site="s", offset_days=None, scrubber=Scrubber(["García^Ana"]))
    assert known["medicationCodeableConcept"] == {"text": "as Dr. Pérez told *** ***"}
    assert known["dosage"] == [{"text": "***: 5 mg daily"}]
    unknown = deid.deidentify(med, site="s", offset_days=None)
    assert "medicationCodeableConcept" not in unknown and "dosage" not in unknown
