"""History at instance, type and system level, with _since, _count and opaque paging."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.conftest import FHIR_JSON, patient

H = {"Content-Type": FHIR_JSON}


def _follow(client, url: str) -> dict:
    parts = urlsplit(url)
    r = client.get(f"{parts.path}?{parts.query}")
    assert r.status_code == 200, r.text
    return r.json()


def _next(bundle: dict) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def test_instance_history_lists_versions_newest_first(client):
    created = client.post("/fhir/Patient", json=patient(), headers=H).json()
    pid = created["id"]
    client.put(f"/fhir/Patient/{pid}", json={**created, "gender": "male"}, headers=H)
    client.delete(f"/fhir/Patient/{pid}")
    bundle = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert bundle["type"] == "history"
    entries = bundle["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert "resource" not in entries[0]
    assert entries[1]["resource"]["gender"] == "male"
    assert entries[2]["request"]["url"] == "Patient"
    assert entries[1]["request"]["url"] == f"Patient/{pid}"
    assert client.get("/fhir/Patient/unknown-one/_history").status_code == 404


def test_system_and_type_history_page_through_everything_once(client, empty_store):
    ids = set()
    for i in range(7):
        ids.add(client.post("/fhir/Patient", json=patient(), headers=H).json()["id"])
        client.post(
            "/fhir/Observation",
            json={"resourceType": "Observation", "status": "final", "code": {"text": f"o{i}"}},
            headers=H,
        )
    seen: list[str] = []
    bundle = client.get("/fhir/Patient/_history?_count=3").json()
    pages = 1
    while True:
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        url = _next(bundle)
        if not url:
            break
        assert "_count" not in url  # the query travels inside the opaque token
        bundle = _follow(client, url)
        pages += 1
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    system = client.get("/fhir/_history?_count=100").json()
    assert len(system["entry"]) == 14
    assert {e["resource"]["resourceType"] for e in system["entry"]} == {"Patient", "Observation"}


def test_history_paging_is_stable_while_data_changes(client, empty_store):
    for _ in range(4):
        client.post("/fhir/Patient", json=patient(), headers=H)
    first = client.get("/fhir/Patient/_history?_count=2").json()
    client.post("/fhir/Patient", json=patient(), headers=H)  # newer: must not shift later pages
    second = _follow(client, _next(first))
    all_ids = [e["resource"]["id"] for e in first["entry"] + second["entry"]]
    assert len(set(all_ids)) == 4
    assert _next(second) is None


def test_history_since(client, empty_store):
    client.post("/fhir/Patient", json=patient(), headers=H)
    later = client.post("/fhir/Patient", json=patient(), headers=H).json()
    since = later["meta"]["lastUpdated"]
    bundle = client.get("/fhir/Patient/_history", params={"_since": since}).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [later["id"]]
    assert client.get("/fhir/_history?_since=yesterday").status_code == 400


def test_tampered_page_token_is_400(client):
    for _ in range(3):
        client.post("/fhir/Patient", json=patient(), headers=H)
    url = _next(client.get("/fhir/Patient/_history?_count=1").json())
    assert url is not None
    parts = urlsplit(url)
    token = parts.query.split("=", 1)[1]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    r = client.get(f"{parts.path}?_page={forged}")
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


def test_count_must_be_a_number(client):
    assert client.get("/fhir/_history?_count=-1").status_code == 400
