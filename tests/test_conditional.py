"""Conditional create, update, patch and delete (R4B http.html 3.1.0.4-3.1.0.8)."""

from __future__ import annotations

import json
import uuid

from tests.conftest import FHIR_JSON, patient

H = {"Content-Type": FHIR_JSON}


def _new(client) -> dict:
    r = client.post("/fhir/Patient", json=patient(), headers=H)
    assert r.status_code == 201
    return r.json()


def test_if_none_exist_creates_when_nothing_matches(client):
    r = client.post(
        "/fhir/Patient", json=patient(), headers={**H, "If-None-Exist": f"_id={uuid.uuid4()}"}
    )
    assert r.status_code == 201


def test_if_none_exist_returns_the_match_without_creating(client):
    existing = _new(client)
    r = client.post(
        "/fhir/Patient", json=patient(), headers={**H, "If-None-Exist": f"_id={existing['id']}"}
    )
    assert r.status_code == 200
    assert r.json()["id"] == existing["id"]
    assert r.json()["meta"]["versionId"] == "1"


def test_if_none_exist_with_several_matches_is_412(client):
    a, b = _new(client), _new(client)
    r = client.post(
        "/fhir/Patient", json=patient(), headers={**H, "If-None-Exist": f"_id={a['id']},{b['id']}"}
    )
    assert r.status_code == 412


def test_conditional_criteria_that_cannot_be_evaluated_are_refused(client):
    # Ignoring an unknown criterion would match everything: a conditional write must refuse.
    r = client.post("/fhir/Patient", json=patient(), headers={**H, "If-None-Exist": "nickname=x"})
    assert r.status_code == 400
    r = client.delete("/fhir/Patient?nickname=x")
    assert r.status_code == 400
    r = client.delete("/fhir/Patient")
    assert r.status_code == 400


def test_conditional_update_updates_the_single_match(client):
    existing = _new(client)
    r = client.put(f"/fhir/Patient?_id={existing['id']}", json=patient(gender="male"), headers=H)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == existing["id"]
    assert r.json()["meta"]["versionId"] == "2"


def test_conditional_update_creates_when_nothing_matches(client):
    r = client.put(f"/fhir/Patient?_id={uuid.uuid4()}", json=patient(), headers=H)
    assert r.status_code == 201
    assert "Location" in r.headers


def test_conditional_update_with_several_matches_is_412(client):
    a, b = _new(client), _new(client)
    r = client.put(f"/fhir/Patient?_id={a['id']},{b['id']}", json=patient(), headers=H)
    assert r.status_code == 412
    assert client.get(f"/fhir/Patient/{a['id']}").json()["meta"]["versionId"] == "1"


def test_conditional_update_with_conflicting_id_is_400(client):
    existing = _new(client)
    r = client.put(f"/fhir/Patient?_id={existing['id']}", json=patient(id="another"), headers=H)
    assert r.status_code == 400


def test_conditional_patch(client):
    existing = _new(client)
    ops = [{"op": "replace", "path": "/gender", "value": "other"}]
    headers = {"Content-Type": "application/json-patch+json"}
    r = client.patch(
        f"/fhir/Patient?_id={existing['id']}", content=json.dumps(ops), headers=headers
    )
    assert r.status_code == 200 and r.json()["gender"] == "other"
    missing = client.patch(
        f"/fhir/Patient?_id={uuid.uuid4()}", content=json.dumps(ops), headers=headers
    )
    assert missing.status_code == 404


def test_conditional_delete(client):
    existing = _new(client)
    assert client.delete(f"/fhir/Patient?_id={existing['id']}").status_code == 204
    assert client.get(f"/fhir/Patient/{existing['id']}").status_code == 410
    assert client.delete(f"/fhir/Patient?_id={uuid.uuid4()}").status_code == 204
    a, b = _new(client), _new(client)
    assert client.delete(f"/fhir/Patient?_id={a['id']},{b['id']}").status_code == 412
    assert client.get(f"/fhir/Patient/{a['id']}").status_code == 200
