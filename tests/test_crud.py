"""Instance and type interactions through the HTTP app: create, read, update, patch, delete."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import FHIR_JSON, patient

H = {"Content-Type": FHIR_JSON}


def _path(location: str) -> str:
    return location.replace("http://testserver", "")


def create(client, resource=None, **headers):
    r = client.post(
        f"/fhir/{(resource or patient())['resourceType']}",
        content=json.dumps(resource or patient()),
        headers={**H, **headers},
    )
    assert r.status_code == 201, r.text
    return r


def test_create_assigns_id_and_returns_location_etag_and_meta(client):
    r = create(client)
    body = r.json()
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert r.headers["Content-Type"].startswith(FHIR_JSON)
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert r.headers["Last-Modified"].endswith("GMT")


def test_create_ignores_client_id(client):
    r = create(client, patient(id="client-chosen"))
    assert r.json()["id"] != "client-chosen"


def test_read_returns_the_stored_json_exactly(client):
    # Precision, offsets and decimals as the client wrote them: a model re-dump would
    # rewrite .356 to .356000, +00:00 to Z, and 1.50 to 1.5.
    text = (
        '{"resourceType":"Observation","status":"final",'
        '"code":{"text":"weight"},"effectiveDateTime":"2020-01-01T10:00:00.356+00:00",'
        '"valueQuantity":{"value":1.50,"unit":"kg"},'
        '"component":[{"code":{"text":"x"},"valueQuantity":{"value":0.10000000000000000001}}]}'
    )
    r = client.post("/fhir/Observation", content=text, headers=H)
    assert r.status_code == 201, r.text
    read = client.get(f"/fhir/Observation/{r.json()['id']}")
    assert read.status_code == 200
    raw = read.text
    assert '"effectiveDateTime":"2020-01-01T10:00:00.356+00:00"' in raw
    assert '"value":1.50' in raw
    assert '"value":0.10000000000000000001' in raw
    assert read.content == r.content


def test_read_unknown_is_404_with_operation_outcome(client):
    r = client.get("/fhir/Patient/does-not-exist")
    assert r.status_code == 404
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"


def test_unknown_resource_type_is_404(client):
    r = client.get("/fhir/Patientt/1")
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-supported"


def test_invalid_id_is_400(client):
    r = client.get("/fhir/Patient/has_underscore")
    assert r.status_code == 400


def test_wrong_method_is_405_with_allow(client):
    r = client.delete("/fhir/metadata")
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET"
    assert r.json()["resourceType"] == "OperationOutcome"
    r = client.post("/fhir/Patient/123", json=patient(), headers=H)
    assert r.status_code == 405
    assert set(r.headers["Allow"].split(", ")) == {"GET", "PUT", "PATCH", "DELETE"}


def test_vread_and_history_versions(client):
    created = create(client).json()
    pid = created["id"]
    updated = client.put(f"/fhir/Patient/{pid}", json={**created, "gender": "male"}, headers=H)
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    assert updated.headers["ETag"] == 'W/"2"'
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{pid}/_history/2").json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404
    assert client.get(f"/fhir/Patient/{pid}/_history/x").status_code == 404


def test_update_creates_with_client_id(client, backend):
    pid = f"client-id-{backend}"
    r = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=H)
    assert r.status_code == 201, r.text
    assert r.headers["Location"].endswith(f"/Patient/{pid}/_history/1")
    assert client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=H).status_code == 200


@pytest.mark.parametrize(
    ("body", "diagnostic"),
    [
        (patient(id="other"), "equal to the id in the URL"),
        (patient(), "no id"),
    ],
)
def test_update_id_must_match_url(client, body, diagnostic):
    pid = create(client).json()["id"]
    r = client.put(f"/fhir/Patient/{pid}", json=body, headers=H)
    assert r.status_code == 400
    assert diagnostic in r.json()["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_update_with_stale_if_match_is_412_and_changes_nothing(client):
    created = create(client).json()
    pid = created["id"]
    ok = client.put(
        f"/fhir/Patient/{pid}",
        json={**created, "gender": "male"},
        headers={**H, "If-Match": 'W/"1"'},
    )
    assert ok.status_code == 200
    stale = client.put(
        f"/fhir/Patient/{pid}",
        json={**created, "gender": "other"},
        headers={**H, "If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["code"] == "conflict"
    current = client.get(f"/fhir/Patient/{pid}").json()
    assert current["gender"] == "male" and current["meta"]["versionId"] == "2"


def test_malformed_if_match_is_400(client):
    pid = create(client).json()["id"]
    r = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers={**H, "If-Match": "v1"})
    assert r.status_code == 400


def test_patch_applies_json_patch(client):
    pid = create(client).json()["id"]
    ops = [
        {"op": "test", "path": "/gender", "value": "female"},
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "add", "path": "/active", "value": True},
    ]
    r = client.patch(
        f"/fhir/Patient/{pid}",
        content=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'},
    )
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "male" and r.json()["active"] is True
    assert r.json()["meta"]["versionId"] == "2"


@pytest.mark.parametrize(
    ("ops", "headers", "status"),
    [
        ([{"op": "test", "path": "/gender", "value": "male"}], {}, 422),
        ([{"op": "replace", "path": "/birthDate", "value": "2016-13"}], {}, 400),
        ([{"op": "replace", "path": "/id", "value": "other"}], {}, 422),
        ([{"op": "replace", "path": "/gender", "value": "male"}], {"If-Match": 'W/"9"'}, 412),
        ({"not": "a patch"}, {}, 400),
    ],
)
def test_bad_patch_changes_nothing(client, ops, headers, status):
    pid = create(client).json()["id"]
    r = client.patch(
        f"/fhir/Patient/{pid}",
        content=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json", **headers},
    )
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_patch_needs_json_patch_media_type(client):
    pid = create(client).json()["id"]
    r = client.patch(f"/fhir/Patient/{pid}", content="[]", headers=H)
    assert r.status_code == 415


def test_delete_is_soft_and_versioned(client):
    pid = create(client).json()["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 204
    assert r.headers["ETag"] == 'W/"2"'
    gone = client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    again = client.delete(f"/fhir/Patient/{pid}")
    assert again.status_code == 204 and "ETag" not in again.headers
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    # an update brings it back as a new version
    revived = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=H)
    assert revived.status_code == 201
    assert revived.json()["meta"]["versionId"] == "3"


def test_delete_with_stale_if_match_is_412(client):
    pid = create(client).json()["id"]
    assert client.delete(f"/fhir/Patient/{pid}", headers={"If-Match": 'W/"7"'}).status_code == 412
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200


def test_delete_unknown_is_204(client):
    assert client.delete("/fhir/Patient/never-existed").status_code == 204


def test_conditional_read_headers_give_304(client):
    r = create(client)
    pid = r.json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200
    modified = r.headers["Last-Modified"]
    not_modified = client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": modified})
    assert not_modified.status_code == 304 and not_modified.content == b""
    old = client.get(
        f"/fhir/Patient/{pid}", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    )
    assert old.status_code == 200


@pytest.mark.parametrize(
    ("prefer", "expect"),
    [
        ("return=minimal", None),
        ("return=representation", "Patient"),
        ("return=OperationOutcome", "OperationOutcome"),
    ],
)
def test_prefer_return(client, prefer, expect):
    r = client.post("/fhir/Patient", json=patient(), headers={**H, "Prefer": prefer})
    assert r.status_code == 201
    assert "Location" in r.headers
    if expect is None:
        assert r.content == b""
    else:
        assert r.json()["resourceType"] == expect


@pytest.mark.parametrize(
    ("query", "accept", "status", "content_type"),
    [
        ("", None, 200, FHIR_JSON),
        ("?_format=json", None, 200, FHIR_JSON),
        ("?_format=application/fhir%2Bjson", None, 200, FHIR_JSON),
        ("", "application/json", 200, "application/json"),
        ("", "application/fhir+json; fhirVersion=4.3", 200, FHIR_JSON),
        ("", "application/fhir+xml;q=1.0, application/fhir+json;q=0.5", 200, FHIR_JSON),
        ("", "text/html, */*;q=0.1", 200, FHIR_JSON),
        ("?_format=xml", None, 406, FHIR_JSON),
        ("", "application/fhir+xml", 406, FHIR_JSON),
        ("", "application/fhir+json; fhirVersion=4.0", 406, FHIR_JSON),
    ],
)
def test_content_negotiation(client, query, accept, status, content_type):
    pid = create(client).json()["id"]
    headers = {"Accept": accept} if accept else {}
    r = client.get(f"/fhir/Patient/{pid}{query}", headers=headers)
    assert r.status_code == status
    assert r.headers["Content-Type"].startswith(content_type)
    assert r.json()["resourceType"] == ("Patient" if status == 200 else "OperationOutcome")


def test_pretty(client):
    pid = create(client).json()["id"]
    assert "\n  " in client.get(f"/fhir/Patient/{pid}?_pretty=true").text
    assert "\n" not in client.get(f"/fhir/Patient/{pid}").text


def test_head_read(client):
    pid = create(client).json()["id"]
    r = client.head(f"/fhir/Patient/{pid}")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["ETag"] == 'W/"1"'


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        ('{"resourceType": "Patient",', FHIR_JSON, 400, "structure"),
        (b"\xff\xfe", FHIR_JSON, 400, "structure"),
        ("", FHIR_JSON, 400, "required"),
        (
            '{"resourceType": "Observation", "status": "final", "code": {}}',
            FHIR_JSON,
            400,
            "invalid",
        ),
        ('{"resourceType": "Nope"}', FHIR_JSON, 400, "structure"),
        ('["Patient"]', FHIR_JSON, 400, "structure"),
        ('{"resourceType": "Patient", "birthDate": "2016-02-30"}', FHIR_JSON, 400, "value"),
        ('{"resourceType": "Patient", "gender": "has space "}', FHIR_JSON, 400, "value"),
        ('{"resourceType": "Patient", "nickname": "x"}', FHIR_JSON, 400, "structure"),
        ('<Patient xmlns="http://hl7.org/fhir"/>', "application/fhir+xml", 415, "not-supported"),
        ('{"resourceType": "Patient"}', "text/plain", 415, "not-supported"),
    ],
)
def test_bad_create_is_rejected_and_stores_nothing(
    client, app, content, content_type, status, code
):
    before = _count_rows(app)
    r = client.post("/fhir/Patient", content=content, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code
    assert _count_rows(app) == before


def test_validation_issue_points_at_the_element(client):
    body = patient(name=[{"family": 3}], birthDate="2016-13")
    r = client.post("/fhir/Patient", json=body, headers=H)
    assert r.status_code == 400
    expressions = {e for issue in r.json()["issue"] for e in issue.get("expression", [])}
    assert "Patient.name[0].family" in expressions
    assert "Patient.birthDate" in expressions
    assert "2016-13" not in r.text  # the offending value is not echoed


def test_oversized_body_is_413(client, settings):
    big = patient(
        text={"status": "generated", "div": "<div>" + "x" * settings.fhir_max_body_bytes + "</div>"}
    )
    r = client.post("/fhir/Patient", content=json.dumps(big), headers=H)
    assert r.status_code == 413
    assert r.json()["issue"][0]["code"] == "too-costly"


def test_binary_base64_is_kept(client):
    data = base64.b64encode(b"\x00\x01 primage").decode()
    r = client.post(
        "/fhir/Binary",
        json={"resourceType": "Binary", "contentType": "text/plain", "data": data},
        headers=H,
    )
    assert r.status_code == 201
    assert client.get(f"/fhir/Binary/{r.json()['id']}").json()["data"] == data


def _count_rows(app) -> tuple[int, int]:
    from sqlalchemy import func, select

    from fhir_server.schema import resource, resource_version

    with app.state.database.read() as repo:
        return (
            repo.conn.execute(select(func.count()).select_from(resource)).scalar_one(),
            repo.conn.execute(select(func.count()).select_from(resource_version)).scalar_one(),
        )
