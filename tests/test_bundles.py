"""Transaction and batch Bundles (R4B http.html 3.1.0.11)."""

from __future__ import annotations

import base64
import json
import uuid

from tests.conftest import FHIR_JSON, patient
from tests.test_crud import _count_rows

H = {"Content-Type": FHIR_JSON}


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def post_entry(resource: dict, full_url: str | None = None, **request) -> dict:
    entry = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def observation(subject: str, **extra) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "MYCN"},
        "subject": {"reference": subject},
        **extra,
    }


def transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_rewrites_urn_uuid_references(client):
    p = urn()
    bundle = transaction(
        post_entry(observation(p), urn()),  # refers forward to the Patient
        post_entry(patient(), p),
    )
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    obs_location = out["entry"][0]["response"]["location"]
    patient_location = out["entry"][1]["response"]["location"]
    pid = patient_location.split("/Patient/")[1].split("/")[0]
    obs = client.get(obs_location.replace("http://testserver", "").split("/_history")[0]).json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    assert "resource" not in out["entry"][0]  # minimal unless asked


def test_transaction_processes_in_spec_order(client):
    doomed = client.post("/fhir/Patient", json=patient(), headers=H).json()
    kept = client.post("/fhir/Patient", json=patient(), headers=H).json()
    bundle = transaction(
        {"request": {"method": "GET", "url": f"Patient/{kept['id']}"}},
        {
            "resource": {**kept, "gender": "male"},
            "request": {"method": "PUT", "url": f"Patient/{kept['id']}"},
        },
        post_entry(patient()),
        {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
    )
    r = client.post("/fhir", json=bundle, headers={**H, "Prefer": "return=representation"})
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    # response entries stay in request order; the GET ran last and sees the PUT
    assert [e["response"]["status"] for e in entries] == [
        "200 OK",
        "200 OK",
        "201 Created",
        "204 No Content",
    ]
    assert entries[0]["resource"]["gender"] == "male"
    assert entries[0]["resource"]["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{doomed['id']}").status_code == 410


def test_failing_third_entry_rolls_back_the_first_two(client, app):
    before = _count_rows(app)
    existing = client.post("/fhir/Patient", json=patient(), headers=H).json()
    before = _count_rows(app)
    bundle = transaction(
        post_entry(patient()),
        {
            "resource": {**existing, "gender": "male"},
            "request": {"method": "PUT", "url": f"Patient/{existing['id']}"},
        },
        post_entry(patient(birthDate="2016-02-30")),
    )
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[2]" in outcome["issue"][0]["diagnostics"]
    assert _count_rows(app) == before
    assert client.get(f"/fhir/Patient/{existing['id']}").json()["meta"]["versionId"] == "1"


def test_failing_precondition_keeps_its_status(client, app):
    existing = client.post("/fhir/Patient", json=patient(), headers=H).json()
    before = _count_rows(app)
    bundle = transaction(
        post_entry(patient()),
        {
            "resource": existing,
            "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"5"'},
        },
    )
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 412
    assert _count_rows(app) == before


def test_transaction_conditional_create_and_reference(client):
    existing = client.post("/fhir/Patient", json=patient(), headers=H).json()
    p = urn()
    bundle = transaction(
        post_entry(patient(), p, ifNoneExist=f"_id={existing['id']}"),
        post_entry(observation(p)),
        post_entry(observation(f"Patient?_id={existing['id']}")),
    )
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    for entry in entries[1:]:
        loc = entry["response"]["location"].replace("http://testserver", "").split("/_history")[0]
        assert client.get(loc).json()["subject"]["reference"] == f"Patient/{existing['id']}"


def test_conditional_reference_must_match_exactly_one(client):
    r = client.post(
        "/fhir", json=transaction(post_entry(observation(f"Patient?_id={uuid.uuid4()}"))), headers=H
    )
    assert r.status_code == 412


def test_dangling_urn_reference_is_400(client):
    r = client.post("/fhir", json=transaction(post_entry(observation(urn()))), headers=H)
    assert r.status_code == 400


def test_transaction_touching_one_resource_twice_is_400(client):
    existing = client.post("/fhir/Patient", json=patient(), headers=H).json()
    url = f"Patient/{existing['id']}"
    bundle = transaction(
        {"resource": existing, "request": {"method": "PUT", "url": url}},
        {"request": {"method": "DELETE", "url": url}},
    )
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 400
    assert "again" in r.json()["issue"][0]["diagnostics"]


def test_transaction_patch_entry(client):
    existing = client.post("/fhir/Patient", json=patient(), headers=H).json()
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    bundle = transaction(
        {"resource": binary, "request": {"method": "PATCH", "url": f"Patient/{existing['id']}"}}
    )
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 200, r.text
    assert client.get(f"/fhir/Patient/{existing['id']}").json()["gender"] == "male"


def test_batch_runs_entries_independently(client, app):
    existing = client.post("/fhir/Patient", json=patient(), headers=H).json()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            post_entry(patient()),
            post_entry(patient(birthDate="not-a-date")),
            {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
            {"request": {"method": "GET", "url": "Patient/missing-one"}},
            {"request": {"method": "PUT", "url": "Nope/1"}, "resource": patient()},
            {"request": {"method": "DELETE"}},
        ],
    }
    r = client.post("/fhir", json=bundle, headers={**H, "Prefer": "return=representation"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == [
        "201 Created",
        "400 Bad Request",
        "200 OK",
        "404 Not Found",
        "404 Not Found",
        "400 Bad Request",
    ]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert out["entry"][2]["resource"]["id"] == existing["id"]
    created = (
        out["entry"][0]["response"]["location"]
        .replace("http://testserver", "")
        .split("/_history")[0]
    )
    assert client.get(created).status_code == 200


def test_bundle_shape_errors(client):
    assert client.post("/fhir", json=patient(), headers=H).status_code == 400
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "collection"}, headers=H)
    assert r.status_code == 400
    r = client.post("/fhir", json=transaction({"request": {"method": "GET"}}), headers=H)
    assert r.status_code == 400


def test_demo_bundle_loads(client):
    from primage.demo import BUNDLE

    r = client.post("/fhir", content=BUNDLE.read_bytes(), headers=H)
    assert r.status_code == 200, r.text
    assert all(e["response"]["status"] == "201 Created" for e in r.json()["entry"])
