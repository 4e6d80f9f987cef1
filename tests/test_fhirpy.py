"""A full flow with a real FHIR client library (fhirpy) against uvicorn on 127.0.0.1."""

from __future__ import annotations

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound


@pytest.fixture
def fhir(live_server: str) -> SyncFHIRClient:
    return SyncFHIRClient(f"{live_server}/fhir")


def test_fhirpy_create_read_update_search_history_delete(fhir):
    patient = fhir.resource("Patient", gender="female", birthDate="2015-06")
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"

    observation = fhir.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "81302-8"}]},
        subject=patient.to_reference(),
        valueString="amplified",
    )
    observation.save()

    fetched = fhir.reference("Patient", patient.id).to_resource()
    assert fetched["gender"] == "female"

    fetched["gender"] = "male"
    fetched.save()
    assert fetched["meta"]["versionId"] == "2"

    found = fhir.resources("Patient").search(_id=patient.id).fetch_all()
    assert [p.id for p in found] == [patient.id]
    assert fhir.resources("Observation").search(_id=observation.id).count() == 1

    history = fhir.execute(f"Patient/{patient.id}/_history", method="get")
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']

    fetched.delete()
    with pytest.raises(ResourceNotFound):
        fhir.reference("Patient", patient.id).to_resource()


def test_fhirpy_sees_validation_errors_as_operation_outcome(fhir):
    bad = fhir.resource("Patient", birthDate="2015-02-30")
    with pytest.raises(OperationOutcome) as info:
        bad.save()
    assert "birthDate" in str(info.value)


def test_fhirpy_transaction(fhir):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6b1d7c5e-3d7b-4d44-9a0e-1f1f4f1c2a10",
                "resource": {"resourceType": "Patient", "gender": "other"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Condition",
                    "subject": {"reference": "urn:uuid:6b1d7c5e-3d7b-4d44-9a0e-1f1f4f1c2a10"},
                    "code": {"text": "Neuroblastoma"},
                },
                "request": {"method": "POST", "url": "Condition"},
            },
        ],
    }
    response = fhir.execute("", method="post", data=bundle)
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created", "201 Created"]
