"""Terminology operations against known answers from the shipped data (mappings/terminology),
through the real HTTP app, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from starlette.testclient import TestClient

from fhir_server.schema import resource, resource_version
from fhir_server.terminology import load
from tests.conftest import FHIR_JSON, token_headers

SCT = "http://snomed.info/sct"
ICDO = "http://terminology.hl7.org/CodeSystem/icd-o-3"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
INSS = "https://primage.eu/fhir/CodeSystem/primage-local-inss-stage"
VS = "https://primage.eu/fhir/ValueSet/"
CM = "https://primage.eu/fhir/ConceptMap/"
HOSPITAL_B = "https://hospital-b.example.org/fhir/CodeSystem/diagnosis-labels"


def _load_shipped(app: FastAPI) -> load.Report:
    shipped = load.shipped(app.state.settings.mappings_dir)
    return load.load(app.state.database.write, load.read_all(shipped))


@pytest.fixture(scope="module")
def terminology(app: FastAPI, client: TestClient) -> TestClient:
    _load_shipped(app)
    return client


def _params(body: dict) -> dict:
    """Parameters as {name: value or [parts...]} (repeated names: a list)."""
    out: dict = {}
    for p in body["parameter"]:
        value = p.get("part") or next(v for k, v in p.items() if k.startswith("value"))
        if p["name"] in out:
            if not isinstance(out[p["name"]], list) or p["name"] not in ("match", "property"):
                out[p["name"]] = [out[p["name"]]]
            out[p["name"]].append(value)
        else:
            out[p["name"]] = [value] if p["name"] in ("match", "property", "designation") else value
    return out


def _parts(parts: list[dict]) -> dict:
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in parts}


def _post(client: TestClient, path: str, parameters: list[dict]):
    return client.post(
        path,
        json={"resourceType": "Parameters", "parameter": parameters},
        headers={"Content-Type": FHIR_JSON},
    )


# --- loading ----------------------------------------------------------------------------------


def test_loading_at_start_is_idempotent(app, terminology):
    again = _load_shipped(app)  # the fixture loaded once already
    assert not again.created and not again.updated
    assert "CodeSystem/icd-o-3-primage-subset" in again.unchanged
    with app.state.database.read() as repo:
        versions = repo.conn.execute(
            select(func.count())
            .select_from(resource_version)
            .where(
                resource_version.c.type == "CodeSystem",
                resource_version.c.id == "icd-o-3-primage-subset",
            )
        ).scalar_one()
        site = repo.conn.execute(
            select(resource.c.site).where(resource.c.id == "icd-o-3-primage-subset")
        ).scalar_one()
    assert versions == 1 and site is None


def test_shipped_resources_are_served_like_any_resource(terminology):
    r = terminology.get("/fhir/ValueSet", params={"url": VS + "inss-stage"})
    assert r.status_code == 200 and r.json()["total"] == 1
    r = terminology.get("/fhir/ConceptMap/neuroblastoma-histology")
    assert r.status_code == 200


# --- CodeSystem $lookup -----------------------------------------------------------------------


def test_lookup_display_and_hierarchy(terminology):
    r = terminology.get("/fhir/CodeSystem/$lookup", params={"system": ICDO, "code": "9500/3"})
    assert r.status_code == 200, r.text
    body = _params(r.json())
    assert body["display"] == "Neuroblastoma, NOS"
    assert body["name"] == "ICDO3PrimageSubset"
    props = [_parts(p) for p in body["property"]]
    assert {"code": "parent", "value": "949-952"} in props


def test_lookup_by_post_with_coding_and_property_filter(terminology):
    r = _post(
        terminology,
        "/fhir/CodeSystem/$lookup",
        [
            {"name": "coding", "valueCoding": {"system": SCT, "code": "182353008"}},
            {"name": "property", "valueCode": "child"},
        ],
    )
    assert r.status_code == 200, r.text
    body = _params(r.json())
    assert body["display"] == "Side (qualifier value)"
    children = {_parts(p)["value"] for p in body["property"]}
    assert children == {"7771000", "24028007", "51440002"}


def test_lookup_on_an_instance(terminology):
    r = terminology.get("/fhir/CodeSystem/loinc-primage-subset/$lookup", params={"code": "3124-5"})
    assert _params(r.json())["display"] == "Vanillylmandelate/Creatinine [Mass Ratio] in Urine"


def test_lookup_errors(terminology):
    r = terminology.get("/fhir/CodeSystem/$lookup", params={"system": ICDO, "code": "9999/9"})
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "9999/9" in r.json()["issue"][0]["diagnostics"]
    r = terminology.get("/fhir/CodeSystem/$lookup", params={"system": "urn:nope", "code": "x"})
    assert r.status_code == 404 and "urn:nope" in r.json()["issue"][0]["diagnostics"]
    r = terminology.get("/fhir/CodeSystem/$lookup", params={"code": "x"})
    assert r.status_code == 400
    r = terminology.get("/fhir/CodeSystem/$nonsense")
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-supported"
    r = terminology.get("/fhir/Patient/$expand")
    assert r.status_code == 404


# --- CodeSystem $subsumes and $validate-code ----------------------------------------------------


@pytest.mark.parametrize(
    ("system", "a", "b", "outcome"),
    [
        (ICDO, "949-952", "9500/3", "subsumes"),
        (ICDO, "9490/3", "949-952", "subsumed-by"),
        (ICDO, "9500/3", "9500/3", "equivalent"),
        (ICDO, "9500/3", "9385/3", "not-subsumed"),
        (SCT, "71388002", "367336001", "subsumes"),
        (INSS, "2A", "2", "subsumed-by"),
    ],
)
def test_subsumes(terminology, system, a, b, outcome):
    r = terminology.get(
        "/fhir/CodeSystem/$subsumes", params={"system": system, "codeA": a, "codeB": b}
    )
    assert r.status_code == 200, r.text
    assert _params(r.json()) == {"outcome": outcome}


def test_subsumes_by_codings_and_unknown_code(terminology):
    r = _post(
        terminology,
        "/fhir/CodeSystem/$subsumes",
        [
            {"name": "codingA", "valueCoding": {"system": NCIT, "code": "C133427"}},
            {"name": "codingB", "valueCoding": {"system": NCIT, "code": "C133431"}},
        ],
    )
    assert _params(r.json()) == {"outcome": "subsumes"}
    r = terminology.get(
        "/fhir/CodeSystem/$subsumes", params={"system": ICDO, "codeA": "C71", "codeB": "nope"}
    )
    assert r.status_code == 404


def test_code_system_validate_code(terminology):
    ok = terminology.get(
        "/fhir/CodeSystem/$validate-code",
        params={"url": SCT, "code": "24028007", "display": "Right (qualifier value)"},
    )
    assert _params(ok.json()) == {"result": True, "display": "Right (qualifier value)"}
    wrong = terminology.get(
        "/fhir/CodeSystem/$validate-code",
        params={"url": SCT, "code": "24028007", "display": "Left"},
    )
    body = _params(wrong.json())
    assert body["result"] is False and "Left" in body["message"]
    unknown = terminology.get("/fhir/CodeSystem/$validate-code", params={"url": SCT, "code": "1"})
    body = _params(unknown.json())
    assert body["result"] is False and "Unknown code '1'" in body["message"]


# --- ValueSet $expand -------------------------------------------------------------------------


def _codes(expansion: dict) -> list[str]:
    return [c["code"] for c in expansion["expansion"].get("contains", [])]


def test_expand_descendent_of_filter(terminology):
    r = terminology.get(
        "/fhir/ValueSet/$expand", params={"url": VS + "neuroblastic-tumour-morphology"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "ValueSet" and "compose" not in body
    assert body["expansion"]["total"] == 3
    assert _codes(body) == ["9490/0", "9490/3", "9500/3"]
    assert body["expansion"]["contains"][2] == {
        "system": ICDO,
        "version": "primage-2024.1",
        "code": "9500/3",
        "display": "Neuroblastoma, NOS",
    }


def test_expand_is_a_with_exclude(terminology):
    body = terminology.get("/fhir/ValueSet/dipg-histology/$expand").json()
    assert sorted(_codes(body)) == ["9380/3", "9385/3", "9400/3", "9440/3"]
    inss = terminology.get("/fhir/ValueSet/$expand", params={"url": VS + "inss-stage"}).json()
    assert _codes(inss) == ["1", "2A", "2B", "3", "4", "4S"]  # the grouping 2 excluded


def test_expand_text_filter_count_offset(terminology):
    url = VS + "dipg-histology"
    body = terminology.get("/fhir/ValueSet/$expand", params={"url": url, "filter": "glio"}).json()
    assert sorted(_codes(body)) == ["9380/3", "9385/3", "9440/3"]
    assert body["expansion"]["total"] == 3
    assert {"name": "filter", "valueString": "glio"} in body["expansion"]["parameter"]
    page = terminology.get(
        "/fhir/ValueSet/$expand", params={"url": url, "count": "2", "offset": "1"}
    ).json()
    assert page["expansion"]["total"] == 4 and page["expansion"]["offset"] == 1
    assert _codes(page) == _codes(terminology.get(f"/fhir/ValueSet/$expand?url={url}").json())[1:3]
    empty = terminology.get("/fhir/ValueSet/$expand", params={"url": url, "filter": "zzz"}).json()
    assert empty["expansion"]["total"] == 0 and "contains" not in empty["expansion"]


def test_expand_inline_value_set_including_other_value_sets(terminology):
    inline = {
        "resourceType": "ValueSet",
        "status": "draft",
        "compose": {
            "include": [
                {"valueSet": [VS + "inrgss-stage"]},
                {
                    "system": SCT,
                    "filter": [{"property": "concept", "op": "is-a", "value": "182353008"}],
                },
            ],
            "exclude": [{"system": NCIT, "concept": [{"code": "C133431"}]}],
        },
    }
    r = _post(terminology, "/fhir/ValueSet/$expand", [{"name": "valueSet", "resource": inline}])
    assert r.status_code == 200, r.text
    assert _codes(r.json()) == [
        "C133428",
        "C133429",
        "C133430",
        "182353008",
        "7771000",
        "24028007",
        "51440002",
    ]


def test_posted_value_set_is_usable_at_once(terminology):
    url = "https://example.org/fhir/ValueSet/test-gliomas-but-glioblastoma"
    vs = {
        "resourceType": "ValueSet",
        "url": url,
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": ICDO,
                    "filter": [{"property": "concept", "op": "descendent-of", "value": "938-948"}],
                }
            ],
            "exclude": [{"system": ICDO, "concept": [{"code": "9440/3"}]}],
        },
    }
    created = terminology.post("/fhir/ValueSet", json=vs, headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201
    body = terminology.get("/fhir/ValueSet/$expand", params={"url": url}).json()
    assert sorted(_codes(body)) == ["9380/3", "9385/3", "9400/3"]
    vs["id"] = created.json()["id"]
    vs["compose"]["exclude"][0]["concept"].append({"code": "9400/3"})
    terminology.put(f"/fhir/ValueSet/{vs['id']}", json=vs, headers={"Content-Type": FHIR_JSON})
    body = terminology.get("/fhir/ValueSet/$expand", params={"url": url}).json()
    assert sorted(_codes(body)) == ["9380/3", "9385/3"]
    terminology.delete(f"/fhir/ValueSet/{vs['id']}")
    assert terminology.get("/fhir/ValueSet/$expand", params={"url": url}).status_code == 404


def test_expand_errors(terminology):
    r = terminology.get("/fhir/ValueSet/$expand", params={"url": VS + "nope"})
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    r = terminology.get("/fhir/ValueSet/$expand")
    assert r.status_code == 400
    r = terminology.get("/fhir/ValueSet/$expand", params={"url": VS + "inss-stage", "count": "x"})
    assert r.status_code == 400
    r = terminology.get("/fhir/ValueSet/no-such-id/$expand")
    assert r.status_code == 404


# --- ValueSet $validate-code ------------------------------------------------------------------


def test_value_set_validate_code(terminology):
    url = VS + "neuroblastoma-primary-site"
    ok = terminology.get(
        "/fhir/ValueSet/$validate-code", params={"url": url, "system": ICDO, "code": "C74.9"}
    ).json()
    assert _params(ok) == {"result": True, "display": "Adrenal gland, NOS"}
    no = terminology.get(
        "/fhir/ValueSet/$validate-code", params={"url": url, "system": ICDO, "code": "C71.7"}
    ).json()
    body = _params(no)
    assert body["result"] is False and "C71.7" in body["message"] and url in body["message"]
    by_concept = _post(
        terminology,
        "/fhir/ValueSet/inrgss-stage/$validate-code",
        [
            {
                "name": "codeableConcept",
                "valueCodeableConcept": {"coding": [{"system": NCIT, "code": "C133430"}]},
            }
        ],
    )
    assert _params(by_concept.json())["result"] is True
    inss = terminology.get(
        "/fhir/ValueSet/$validate-code",
        params={"url": VS + "inss-stage", "system": INSS, "code": "2"},
    ).json()
    assert _params(inss)["result"] is False


# --- ConceptMap $translate --------------------------------------------------------------------


def test_translate_forward(terminology):
    r = terminology.get(
        "/fhir/ConceptMap/$translate",
        params={"system": HOSPITAL_B, "code": "DIPG (radiologisch)", "targetsystem": ICDO},
    )
    assert r.status_code == 200, r.text
    body = _params(r.json())
    assert body["result"] is True
    (match,) = [_parts(m) for m in body["match"]]
    assert match["equivalence"] == "wider"
    assert match["concept"] == {"system": ICDO, "code": "9380/3", "display": "Glioma, malignant"}
    assert match["source"] == CM + "example-hospital-b-diagnosis"


def test_translate_to_every_target_and_by_url(terminology):
    body = _params(
        terminology.get(
            "/fhir/ConceptMap/$translate", params={"system": HOSPITAL_B, "code": "Neuroblastom"}
        ).json()
    )
    targets = {
        (_parts(m)["concept"]["system"], _parts(m)["concept"]["code"]) for m in body["match"]
    }
    assert targets == {(ICDO, "9500/3"), (SCT, "432328008")}
    by_url = _params(
        terminology.get(
            "/fhir/ConceptMap/neuroblastoma-histology/$translate",
            params={
                "system": "https://primage.eu/fhir/CodeSystem/primage-local-example-histology-label",
                "code": "ganglioneuroblastoma nodulare",
            },
        ).json()
    )
    assert [_parts(m)["concept"]["code"] for m in by_url["match"]] == ["9490/3"]


def test_translate_reverse_reports_the_inverse_equivalence(terminology):
    r = _post(
        terminology,
        "/fhir/ConceptMap/$translate",
        [
            {"name": "url", "valueUri": CM + "example-registry-staging"},
            {"name": "coding", "valueCoding": {"system": INSS, "code": "2A"}},
            {"name": "reverse", "valueBoolean": True},
        ],
    )
    assert r.status_code == 200, r.text
    (match,) = [_parts(m) for m in _params(r.json())["match"]]
    assert match["equivalence"] == "wider"  # the map says INSS-2 -> 2A is narrower
    assert match["concept"]["code"] == "INSS-2"


def test_translate_unmatched_and_unknown(terminology):
    body = _params(
        terminology.get(
            "/fhir/ConceptMap/$translate",
            params={
                "system": "https://hospital-a.example.org/fhir/CodeSystem/lab-codes",
                "code": "VMA-24H",
            },
        ).json()
    )
    assert body["result"] is False and "No mapping" in body["message"]
    assert _parts(body["match"][0])["equivalence"] == "unmatched"
    none = _params(
        terminology.get(
            "/fhir/ConceptMap/$translate", params={"system": "urn:x", "code": "y"}
        ).json()
    )
    assert none["result"] is False and "match" not in none
    r = terminology.get(
        "/fhir/ConceptMap/$translate", params={"url": CM + "nope", "system": "urn:x", "code": "y"}
    )
    assert r.status_code == 404


# --- a larger code system loaded from a file --------------------------------------------------


def test_terminology_load_a_generated_code_system(app, terminology, tmp_path: Path):
    url = "https://example.org/fhir/CodeSystem/test-synthetic-large"
    concepts = [
        {
            "code": f"G{g}",
            "display": f"group {g}",
            "concept": [{"code": f"G{g}-{i}", "display": f"item {g} {i}"} for i in range(50)],
        }
        for g in range(40)
    ]
    body = {
        "resourceType": "CodeSystem",
        "url": url,
        "status": "active",
        "content": "complete",
        "concept": concepts,
        "version": "1",
    }
    path = tmp_path / "large.json"
    path.write_text(
        __import__("json").dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": body}]}
        )
    )
    report = load.load(app.state.database.write, load.read(path))
    assert len(report.created) == 1
    assert load.load(app.state.database.write, load.read(path)).unchanged == report.created
    inline = {
        "resourceType": "ValueSet",
        "status": "draft",
        "compose": {
            "include": [
                {"system": url, "filter": [{"property": "concept", "op": "is-a", "value": "G7"}]}
            ]
        },
    }
    r = _post(
        terminology,
        "/fhir/ValueSet/$expand",
        [{"name": "valueSet", "resource": inline}, {"name": "count", "valueInteger": 5}],
    )
    assert r.json()["expansion"]["total"] == 51 and len(r.json()["expansion"]["contains"]) == 5
    sub = terminology.get(
        "/fhir/CodeSystem/$subsumes", params={"system": url, "codeA": "G7", "codeB": "G7-49"}
    )
    assert _params(sub.json()) == {"outcome": "subsumes"}


def test_operations_need_read_and_search_scope_on_their_type(auth_app, web, terminology):
    params = {"url": VS + "inss-stage"}
    allowed = token_headers(web, auth_app, "system/ValueSet.rs", None)
    assert web.get("/fhir/ValueSet/$expand", params=params, headers=allowed).status_code == 200
    read_only = token_headers(web, auth_app, "system/ValueSet.r", None)
    assert web.get("/fhir/ValueSet/$expand", params=params, headers=read_only).status_code == 403
    other = token_headers(web, auth_app, "system/CodeSystem.rs", None)
    assert web.get("/fhir/ValueSet/$expand", params=params, headers=other).status_code == 403
    site = token_headers(web, auth_app, "system/*.rs", "SITE-T")  # platform data: every site
    assert web.get("/fhir/ValueSet/$expand", params=params, headers=site).status_code == 200
