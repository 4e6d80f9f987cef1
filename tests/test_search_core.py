"""The search subset of the REST core: _id, _lastUpdated, _count, _summary=count, paging."""

from __future__ import annotations

import pytest

from tests.conftest import FHIR_JSON, pages, patient

H = {"Content-Type": FHIR_JSON}


def test_search_by_id(client):
    a = client.post("/fhir/Patient", json=patient(), headers=H).json()
    b = client.post("/fhir/Patient", json=patient(), headers=H).json()
    bundle = client.get(f"/fhir/Patient?_id={a['id']},{b['id']}").json()
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    assert {e["resource"]["id"] for e in bundle["entry"]} == {a["id"], b["id"]}
    assert all(e["search"]["mode"] == "match" for e in bundle["entry"])
    assert bundle["entry"][0]["fullUrl"].startswith("http://testserver/fhir/Patient/")
    # repeated parameters are AND
    both = client.get(f"/fhir/Patient?_id={a['id']}&_id={b['id']}").json()
    assert both["total"] == 0


def test_deleted_resources_are_not_found(client):
    a = client.post("/fhir/Patient", json=patient(), headers=H).json()
    client.delete(f"/fhir/Patient/{a['id']}")
    assert client.get(f"/fhir/Patient?_id={a['id']}").json()["total"] == 0


def test_post_search(client):
    a = client.post("/fhir/Patient", json=patient(), headers=H).json()
    r = client.post(
        "/fhir/Patient/_search",
        content=f"_id={a['id']}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    assert r.json()["total"] == 1


@pytest.mark.parametrize(
    ("prefix", "offset", "found"),
    [
        ("ge", 0, True),
        ("gt", 1, False),
        ("lt", 1, True),
        ("le", 0, True),
        ("eq", 0, True),
        ("ne", 0, False),
    ],
)
def test_last_updated(client, prefix, offset, found):
    created = client.post("/fhir/Patient", json=patient(), headers=H).json()
    stamp = created["meta"]["lastUpdated"]
    if offset:  # the next microsecond
        head, frac = stamp[:-1].split(".")
        stamp = f"{head}.{int(frac) + 1:06d}Z"
    r = client.get(f"/fhir/Patient?_id={created['id']}&_lastUpdated={prefix}{stamp}")
    assert r.status_code == 200
    assert r.json()["total"] == (1 if found else 0)


def test_last_updated_day_precision(client):
    created = client.post("/fhir/Patient", json=patient(), headers=H).json()
    day = created["meta"]["lastUpdated"][:10]
    assert client.get(f"/fhir/Patient?_id={created['id']}&_lastUpdated={day}").json()["total"] == 1
    assert (
        client.get(f"/fhir/Patient?_id={created['id']}&_lastUpdated=lt{day}").json()["total"] == 0
    )
    assert client.get("/fhir/Patient?_lastUpdated=2020-13-01").status_code == 400


def test_paging_returns_every_match_once(client):
    ids = [client.post("/fhir/Patient", json=patient(), headers=H).json()["id"] for _ in range(11)]
    query = ",".join(ids)
    seen = []
    for bundle in pages(client, f"/fhir/Patient?_id={query}&_count=4"):
        assert bundle["total"] == 11
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        assert all(ids[0] not in link["url"] for link in bundle["link"][1:])  # values stay out
    assert sorted(seen) == sorted(ids)


def test_summary_count(client):
    a = client.post("/fhir/Patient", json=patient(), headers=H).json()
    bundle = client.get(f"/fhir/Patient?_id={a['id']}&_summary=count").json()
    assert bundle["total"] == 1 and "entry" not in bundle


def test_unknown_parameter_lenient_and_strict(client):
    lenient = client.get("/fhir/Patient?_count=1&nickname=smith")
    assert lenient.status_code == 200
    bundle = lenient.json()
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["severity"] == "warning"
    assert "nickname" not in bundle["link"][0]["url"]  # self shows only what was applied
    strict = client.get("/fhir/Patient?nickname=smith", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_system_search(client):
    a = client.post("/fhir/Patient", json=patient(), headers=H).json()
    o = client.post(
        "/fhir/Observation",
        json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
        headers=H,
    ).json()
    both = client.get(f"/fhir?_type=Patient,Observation&_id={a['id']},{o['id']}").json()
    assert sorted(e["resource"]["id"] for e in both["entry"]) == sorted([a["id"], o["id"]])
    assert both["link"][0]["url"].startswith("http://testserver/fhir?_type=Observation%2CPatient")
    # R4B: with _type, every other parameter must be common to all the types
    not_common = client.get("/fhir?_type=Patient,Observation&status=final")
    assert not_common.status_code == 400
    one_type = client.get(f"/fhir?_type=Observation&_id={o['id']}&status=final").json()
    assert [e["resource"]["id"] for e in one_type["entry"]] == [o["id"]]
    untyped = client.get(f"/fhir?_id={a['id']}").json()
    assert [e["resource"]["id"] for e in untyped["entry"]] == [a["id"]]
    assert client.get("/fhir?gender=female").status_code == 400
    assert client.get("/fhir?_type=Nope").status_code == 400
