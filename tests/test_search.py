"""Search conformance: query -> expected ids over tests/search_data.py, on both databases."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.conftest import FHIR_JSON, pages
from tests.search_data import bundle

H = {"Content-Type": FHIR_JSON}


@pytest.fixture(scope="module")
def loaded(app, client):
    from fhir_server.schema import metadata

    with app.state.database.write() as repo:
        for table in reversed(metadata.sorted_tables):
            repo.conn.execute(table.delete())
    r = client.post("/fhir", json=bundle(), headers=H)
    assert r.status_code == 200, r.text
    return client


def ids(client, query: str, **headers) -> list[str]:
    r = client.get(f"/fhir/{query}", headers=headers)
    assert r.status_code == 200, r.text
    return sorted(
        e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] != "outcome"
    )


CASES = [
    # token
    ("Patient?gender=female", ["pat-a", "pat-c"]),
    ("Patient?identifier=A-1", ["pat-a", "pat-c"]),
    ("Patient?identifier=urn:oid:1.2.3|A-1", ["pat-a"]),
    ("Patient?identifier=urn:oid:1.2.3|", ["pat-a", "pat-b"]),
    ("Patient?identifier=|A-1", []),
    ("Patient?active=true", ["pat-a"]),
    ("Patient?active=false", ["pat-b"]),
    ("Patient?gender:not=female", ["pat-b"]),
    ("Patient?deceased=true", ["pat-c"]),
    ("Observation?code=http://loinc.org|81302-8", ["obs-1", "obs-2"]),
    ("Observation?code:text=mycn", ["obs-1", "obs-2"]),
    ("Observation?status=final", ["obs-1", "obs-3", "obs-4"]),
    ("Condition?code=87163003,1264050008", ["cond-1", "cond-2"]),
    ("Condition?code:text=neuro", ["cond-1"]),
    ("Patient?gender=female&identifier=A-1", ["pat-a", "pat-c"]),
    ("Patient?gender=female&gender=male", []),
    # string
    ("Patient?family=muller", ["pat-a", "pat-b"]),
    ("Patient?family:exact=Müller", ["pat-a"]),
    ("Patient?family:exact=müller", []),
    ("Patient?family:contains=SMITH", ["pat-b"]),
    ("Patient?name=maria", ["pat-c"]),
    ("Patient?given=an", ["pat-a"]),
    ("Patient?address-city=valencia", ["pat-a"]),
    ("Patient?family=mu%25", []),  # a literal %, not a wildcard
    # date
    ("Patient?birthdate=2016", ["pat-a"]),
    ("Patient?birthdate=2016-04-12", ["pat-a"]),
    ("Patient?birthdate=2014-11", ["pat-b"]),
    ("Patient?birthdate=2014-11-05", []),
    ("Patient?birthdate=lt2014-12", ["pat-b", "pat-c"]),
    ("Patient?birthdate=ge2014-11-15", ["pat-a", "pat-b"]),
    ("Patient?birthdate=gt2016", []),
    ("Patient?birthdate=sa2012", ["pat-a", "pat-b"]),
    ("Patient?birthdate=eb2012", ["pat-c"]),
    ("Patient?birthdate=ne2016", ["pat-b", "pat-c"]),
    ("Observation?date=2019-06-15", []),
    ("Observation?date=2019-06", ["obs-1", "obs-3"]),
    ("Observation?date=ge2019-06-25", ["obs-3", "obs-4"]),
    ("Observation?date=lt2017-03-05T11:00:00Z", ["obs-2"]),
    ("Observation?date=lt2017-03-05T11:00:00%2B02:00", []),
    ("Condition?onset-date=ge2019-09", ["cond-2"]),
    ("Observation?date=ge2019-06-01&date=lt2019-07-01", ["obs-1", "obs-3"]),
    ("Observation?date=ge2019-06-01&date=lt2019-06-10", ["obs-3"]),
    ("Patient?birthdate=ge2012&birthdate=le2015", ["pat-b"]),
    # number
    ("RiskAssessment?probability=0.35", ["ra-1"]),
    ("RiskAssessment?probability=0.4", ["ra-1"]),
    ("RiskAssessment?probability=0.40", []),
    ("RiskAssessment?probability=gt0.5", ["ra-2"]),
    ("RiskAssessment?probability=ap0.75", ["ra-2"]),
    # quantity
    ("Observation?value-quantity=12.5", ["obs-3"]),
    ("Observation?value-quantity=gt50", ["obs-4"]),
    ("Observation?value-quantity=100|http://unitsofmeasure.org|mmol/L", ["obs-4"]),
    ("Observation?value-quantity=100||mmol/L", ["obs-4"]),
    ("Observation?value-quantity=100|http://other|mmol/L", []),
    ("Observation?value-quantity=lt20||mg/g", ["obs-3"]),
    # reference
    ("Observation?subject=Patient/pat-a", ["obs-1", "obs-3"]),
    ("Observation?subject=pat-a", ["obs-1", "obs-3"]),
    ("Observation?subject:Patient=pat-b", ["obs-2"]),
    ("Observation?patient=pat-c", ["obs-4"]),
    ("Observation?subject=http://testserver/fhir/Patient/pat-a", ["obs-1", "obs-3"]),
    ("Patient?general-practitioner=Practitioner/prac-1", ["pat-b"]),
    # uri
    ("Questionnaire?url=http://primage.eu/fhir/Questionnaire/nb-eform", ["q-1"]),
    ("Questionnaire?url:below=http://primage.eu/fhir/Questionnaire", ["q-1", "q-2"]),
    ("Questionnaire?url:above=http://primage.eu/fhir/Questionnaire/nb-eform/v2", ["q-1"]),
    # :missing
    ("Observation?value-quantity:missing=true", ["obs-1", "obs-2"]),
    ("Observation?value-quantity:missing=false", ["obs-3", "obs-4"]),
    ("Patient?general-practitioner:missing=false", ["pat-b"]),
    # chaining
    ("Observation?subject:Patient.gender=male", ["obs-2"]),
    ("Observation?subject.family=muller", ["obs-1", "obs-2", "obs-3"]),
    ("Observation?patient.identifier=urn:oid:1.2.3|A-1", ["obs-1", "obs-3"]),
    ("Observation?subject:Patient.general-practitioner.family=house", ["obs-2"]),
    # reverse chaining
    ("Patient?_has:Observation:subject:code=81302-8", ["pat-a", "pat-b"]),
    ("Patient?_has:Condition:subject:code=1264050008", ["pat-c"]),
    (
        "Practitioner?_has:Patient:general-practitioner:_has:Observation:subject:code=81302-8",
        ["prac-1"],
    ),
    ("Patient?_has:Observation:subject:code=2093-3&gender=male", []),
    # _id, _lastUpdated
    ("Patient?_id=pat-a,pat-b", ["pat-a", "pat-b"]),
    ("Patient?_lastUpdated=gt2000-01-01", ["pat-a", "pat-b", "pat-c"]),
]


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[c[0] for c in CASES])
def test_search(loaded, query, expected):
    assert ids(loaded, query) == expected


def ordered(client, query: str) -> list[str]:
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return [
        e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"
    ]


PATIENTS = "Patient?_id=pat-a,pat-b,pat-c"
OBSERVATIONS = "Observation?_id=obs-1,obs-2,obs-3,obs-4"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"{PATIENTS}&_sort=birthdate", ["pat-c", "pat-b", "pat-a"]),
        (f"{PATIENTS}&_sort=-birthdate", ["pat-a", "pat-b", "pat-c"]),
        (f"{PATIENTS}&_sort=family", ["pat-a", "pat-b", "pat-c"]),
        (f"{PATIENTS}&_sort=-_id", ["pat-c", "pat-b", "pat-a"]),
        (f"{OBSERVATIONS}&_sort=value-quantity", ["obs-3", "obs-4", "obs-1", "obs-2"]),
        (f"{OBSERVATIONS}&_sort=-value-quantity", ["obs-4", "obs-3", "obs-1", "obs-2"]),
        (f"{OBSERVATIONS}&_sort=status,-date", ["obs-4", "obs-3", "obs-1", "obs-2"]),
        (f"{OBSERVATIONS}&_sort=-status,date", ["obs-2", "obs-3", "obs-1", "obs-4"]),
    ],
)
def test_sort(loaded, query, expected):
    assert ordered(loaded, query) == expected


def test_sorted_paging_keeps_the_order_across_pages(loaded):
    seen = [
        e["resource"]["id"]
        for page in pages(loaded, f"/fhir/{OBSERVATIONS}&_sort=-date&_count=1")
        for e in page.get("entry", [])
    ]
    assert seen == ["obs-4", "obs-3", "obs-1", "obs-2"]


def test_include_and_revinclude(loaded):
    def entries(query):
        r = loaded.get(f"/fhir/{query}")
        assert r.status_code == 200, r.text
        return sorted((e["search"]["mode"], e["resource"]["id"]) for e in r.json()["entry"])

    assert entries("Observation?code=2093-3&_include=Observation:subject") == [
        ("include", "pat-c"),
        ("match", "obs-4"),
    ]
    assert entries("Patient?_id=pat-a&_revinclude=Observation:subject") == [
        ("include", "obs-1"),
        ("include", "obs-3"),
        ("match", "pat-a"),
    ]
    assert entries(
        "Observation?_id=obs-2&_include=Observation:subject&_include:iterate=Patient:general-practitioner"
    ) == [("include", "pat-b"), ("include", "prac-1"), ("match", "obs-2")]
    assert entries("Observation?_id=obs-1&_include=Observation:*") == [
        ("include", "pat-a"),
        ("match", "obs-1"),
    ]


def test_index_follows_updates_and_deletes(loaded):
    r = loaded.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "gender": "other", "birthDate": "1999"},
        headers=H,
    )
    pid = r.json()["id"]
    assert ids(loaded, "Patient?gender=other") == [pid]
    loaded.put(
        f"/fhir/Patient/{pid}",
        json={"resourceType": "Patient", "id": pid, "gender": "unknown"},
        headers=H,
    )
    assert ids(loaded, "Patient?gender=other") == []
    assert ids(loaded, "Patient?gender=unknown") == [pid]
    loaded.delete(f"/fhir/Patient/{pid}")
    assert ids(loaded, "Patient?gender=unknown") == []


@pytest.mark.parametrize(
    "query",
    [
        "Patient?birthdate=2016-13",
        "Patient?birthdate=xx2016",
        "Observation?code.family=x",
        "Observation?subject:Nope.family=x",
        "Patient?_count=-1",
        "Observation?value-quantity=abc",
        "Observation?value-quantity=1|2",
        "Patient?identifier=a|b|c",
        "Patient?active:missing=maybe",
        "Observation?_include=Observation:status",
        "Patient?_has:Observation:code:code=x",
        "Patient?_sort=nickname",
        "Observation?_sort=subject",
        "Patient?_sort=",
        "Patient?"
        + "&".join(
            [
                "_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:code=x"
            ]
        ),
    ],
)
def test_bad_search_is_400(loaded, query):
    r = loaded.get(f"/fhir/{query}")
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_too_many_or_values_is_400(loaded):
    r = loaded.post(
        "/fhir/Patient/_search",
        content="gender=" + ",".join(["female"] * 10_000),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400
    assert "Too many values" in r.json()["issue"][0]["diagnostics"]


def test_unsupported_modifier_lenient_and_strict(loaded):
    r = loaded.get("/fhir/Patient?gender:exact=female")
    assert r.status_code == 200
    outcome = [e for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "exact" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert (
        loaded.get(
            "/fhir/Patient?gender:exact=female", headers={"Prefer": "handling=strict"}
        ).status_code
        == 400
    )


def test_escaped_comma_is_one_value(loaded):
    loaded.put(
        "/fhir/Practitioner/prac-comma",
        json={
            "resourceType": "Practitioner",
            "id": "prac-comma",
            "name": [{"family": "Smith, Jr"}],
        },
        headers=H,
    )
    assert ids(loaded, "Practitioner?family:exact=" + quote("Smith\\, Jr")) == ["prac-comma"]


def test_paging_thousands_returns_each_match_once(app, loaded):
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"paging-{i}"},
                "subject": {"reference": "Patient/pat-b"},
                "valueQuantity": {"value": i},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
        for i in range(2000)
    ]
    for start in range(0, 2000, 500):
        r = loaded.post(
            "/fhir",
            json={
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": entries[start : start + 500],
            },
            headers=H,
        )
        assert r.status_code == 200
    # Planner statistics, as autovacuum takes them within a minute of a bulk load: without
    # any, PostgreSQL guesses one row per table and picks quadratic nested loops.
    app.state.database.analyze()
    query = "Observation?subject=Patient/pat-b&value-quantity=ge0&_count=50&_sort=-value-quantity"
    walked = list(pages(loaded, f"/fhir/{query}"))
    assert [b["total"] for b in walked] == [2000] * 40
    seen = [e["resource"]["id"] for b in walked for e in b.get("entry", [])]
    assert len(seen) == len(set(seen)) == 2000
    values = [e["resource"]["valueQuantity"]["value"] for e in walked[-1]["entry"]]
    assert values == list(range(49, -1, -1))  # the last page holds the smallest values


def test_summary_and_elements(loaded):
    def first(query):
        r = loaded.get(f"/fhir/{query}")
        assert r.status_code == 200, r.text
        return r.json()["entry"][0]["resource"]

    summary = first("Patient?_id=pat-b&_summary=true")
    assert summary["gender"] == "male" and summary["name"]
    assert "generalPractitioner" not in summary  # not a summary element of Patient
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])

    elements = first("Observation?_id=obs-3&_elements=value")
    assert set(elements) == {
        "resourceType",
        "id",
        "meta",
        "status",
        "code",
        "valueQuantity",
    }  # + mandatory

    text = first("Patient?_id=pat-a&_summary=text")
    assert set(text) == {"resourceType", "id", "meta"}

    data = first("Patient?_id=pat-a&_summary=data")
    assert data["gender"] == "female" and "text" not in data

    full = first("Patient?_id=pat-a&_summary=false")
    assert "tag" not in full["meta"]

    read = loaded.get("/fhir/Patient/pat-a?_elements=birthDate")
    assert read.status_code == 200 and set(read.json()) == {
        "resourceType",
        "id",
        "meta",
        "birthDate",
    }

    assert loaded.get("/fhir/Patient?_summary=maybe").status_code == 400
    assert loaded.get("/fhir/Patient?_summary=true&_elements=gender").status_code == 400
