"""A small, hand-checked data set for the search conformance table (ids are fixed)."""

from __future__ import annotations

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


def _obs(id_, subject, code, system=LOINC, display=None, **value):
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": value.pop("status", "final"),
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient/{subject}"},
        **value,
    }


RESOURCES = [
    {"resourceType": "Practitioner", "id": "prac-1", "name": [{"family": "House"}]},
    {
        "resourceType": "Patient",
        "id": "pat-a",
        "gender": "female",
        "birthDate": "2016-04-12",
        "active": True,
        "name": [{"family": "Müller", "given": ["Anna"]}],
        "identifier": [{"system": "urn:oid:1.2.3", "value": "A-1"}],
        "address": [{"city": "València"}],
    },
    {
        "resourceType": "Patient",
        "id": "pat-b",
        "gender": "male",
        "birthDate": "2014-11",
        "active": False,
        "name": [{"family": "Muller-Smith", "given": ["Ben"]}],
        "identifier": [{"system": "urn:oid:1.2.3", "value": "B-2"}],
        "generalPractitioner": [{"reference": "Practitioner/prac-1"}],
    },
    {
        "resourceType": "Patient",
        "id": "pat-c",
        "gender": "female",
        "birthDate": "2011",
        "deceasedBoolean": True,
        "name": [{"family": "Rossi", "given": ["Carla", "Maria"]}],
        "identifier": [{"system": "urn:other", "value": "A-1"}],
    },
    _obs(
        "obs-1",
        "pat-a",
        "81302-8",
        display="MYCN gene amplification",
        valueString="amplified",
        effectiveDateTime="2019-06-20",
        category=[{"coding": [{"code": "laboratory"}]}],
    ),
    _obs(
        "obs-2",
        "pat-b",
        "81302-8",
        display="MYCN gene amplification",
        valueString="not amplified",
        effectiveDateTime="2017-03-05T10:00:00Z",
        status="preliminary",
    ),
    _obs(
        "obs-3",
        "pat-a",
        "U-VMA",
        system="https://primage.eu/local",
        valueQuantity={"value": 12.5, "unit": "mg/g", "system": UCUM, "code": "mg/g"},
        effectivePeriod={"start": "2019-06-01", "end": "2019-06-30"},
    ),
    _obs(
        "obs-4",
        "pat-c",
        "2093-3",
        valueQuantity={"value": 100, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
        effectiveDateTime="2020",
    ),
    {
        "resourceType": "Condition",
        "id": "cond-1",
        "subject": {"reference": "Patient/pat-a"},
        "code": {"coding": [{"system": SCT, "code": "87163003"}], "text": "Neuroblastoma"},
        "onsetDateTime": "2019-06-12",
    },
    {
        "resourceType": "Condition",
        "id": "cond-2",
        "subject": {"reference": "Patient/pat-c"},
        "code": {"coding": [{"system": SCT, "code": "1264050008"}]},
        "onsetPeriod": {"start": "2019-09"},
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra-1",
        "status": "final",
        "subject": {"reference": "Patient/pat-a"},
        "prediction": [{"probabilityDecimal": 0.35}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra-2",
        "status": "final",
        "subject": {"reference": "Patient/pat-b"},
        "prediction": [{"probabilityDecimal": 0.8}],
    },
    {
        "resourceType": "Questionnaire",
        "id": "q-1",
        "status": "active",
        "url": "http://primage.eu/fhir/Questionnaire/nb-eform",
    },
    {
        "resourceType": "Questionnaire",
        "id": "q-2",
        "status": "active",
        "url": "http://primage.eu/fhir/Questionnaire/dipg-eform",
    },
]


def bundle() -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in RESOURCES
        ],
    }
