"""Token modifiers answered by the terminology layer: :in, :not-in, :below, :above, against
the shipped code systems and value sets (mappings/terminology), on both databases."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from fhir_server.search import SearchCompiler, concepts
from fhir_server.searchparams import base_registry
from tests.conftest import FHIR_JSON
from tests.test_terminology import _load_shipped

H = {"Content-Type": FHIR_JSON}
SCT = "http://snomed.info/sct"
ICDO = "http://terminology.hl7.org/CodeSystem/icd-o-3"
LOINC = "http://loinc.org"
VS = "https://primage.eu/fhir/ValueSet/"
NEURO = VS + "neuroblastic-tumour-morphology"  # ICD-O-3 descendants of 949-952
DIPG = VS + "dipg-histology"  # ICD-O-3 938-948 and below, without the heading
TAG = "_tag=urn:test:search-terminology|stx"
META = {"tag": [{"system": "urn:test:search-terminology", "code": "stx"}]}
GENDER_VS = "urn:test:search-terminology:female"


def _cc(*codings: tuple[str, str]) -> dict:
    return {"coding": [{"system": s, "code": c} for s, c in codings]}


def _condition(id_: str, patient: str, code: dict | None) -> dict:
    body = {"resourceType": "Condition", "id": id_, "meta": META}
    body["subject"] = {"reference": f"Patient/{patient}"}
    if code is not None:
        body["code"] = code
    return body


def _procedure(id_: str, code: str) -> dict:
    return {
        "resourceType": "Procedure",
        "id": id_,
        "meta": META,
        "status": "completed",
        "subject": {"reference": "Patient/stx-p1"},
        "code": _cc((SCT, code)),
    }


RESOURCES = [
    {"resourceType": "Patient", "id": "stx-p1", "meta": META, "gender": "female"},
    {"resourceType": "Patient", "id": "stx-p2", "meta": META, "gender": "male"},
    {"resourceType": "Patient", "id": "stx-p3", "meta": META},
    _condition("stx-nb", "stx-p1", _cc((ICDO, "9500/3"))),
    _condition("stx-gn", "stx-p1", _cc((ICDO, "9490/0"))),
    _condition("stx-gbm", "stx-p2", _cc((ICDO, "9440/3"))),
    _condition("stx-mixed", "stx-p3", _cc((SCT, "432328008"), (ICDO, "9490/3"))),
    _condition("stx-other", "stx-p3", _cc(("http://example.org/codes", "9500/3"))),
    _condition("stx-text", "stx-p3", {"text": "neuroblastoma"}),
    _condition("stx-none", "stx-p3", None),
    _procedure("stx-proc", "71388002"),  # Procedure (the parent)
    _procedure("stx-chemo", "367336001"),  # Chemotherapy, below it
    _procedure("stx-biopsy", "86273004"),  # Biopsy, below it
    _procedure("stx-left", "7771000"),  # Left (qualifier value): another branch
]


@pytest.fixture(scope="module")
def loaded(app: FastAPI, client: TestClient) -> TestClient:
    _load_shipped(app)
    for body in RESOURCES:
        r = client.put(f"/fhir/{body['resourceType']}/{body['id']}", json=body, headers=H)
        assert r.status_code in (200, 201), r.text
    gender = {
        "resourceType": "ValueSet",
        "id": "stx-female",
        "url": GENDER_VS,
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": "http://hl7.org/fhir/administrative-gender",
                    "concept": [{"code": "female"}],
                }
            ]
        },
    }
    r = client.put("/fhir/ValueSet/stx-female", json=gender, headers=H)
    assert r.status_code in (200, 201), r.text
    return client


def ids(client: TestClient, query: str) -> list[str]:
    r = client.get(f"/fhir/{query}&{TAG}")
    assert r.status_code == 200, r.text
    return sorted(
        e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"
    )


CASES = [
    # :in, a canonical url (and with its version), or a literal ValueSet/id
    (f"Condition?code:in={NEURO}", ["stx-gn", "stx-mixed", "stx-nb"]),
    (f"Condition?code:in={NEURO}|primage-2024.1", ["stx-gn", "stx-mixed", "stx-nb"]),
    ("Condition?code:in=ValueSet/dipg-histology", ["stx-gbm"]),
    (f"Condition?code:in={DIPG}", ["stx-gbm"]),
    # comma: OR; repeated: AND
    (f"Condition?code:in={NEURO},{DIPG}", ["stx-gbm", "stx-gn", "stx-mixed", "stx-nb"]),
    (f"Condition?code:in={NEURO}&code:in={DIPG}", []),
    (f"Condition?code:in={NEURO}&code={SCT}|432328008", ["stx-mixed"]),
    (f"Condition?code:in={NEURO}&subject=Patient/stx-p1", ["stx-gn", "stx-nb"]),
    # :not-in: no coding in the value set, including no code at all (as :not)
    (f"Condition?code:not-in={NEURO}", ["stx-gbm", "stx-none", "stx-other", "stx-text"]),
    (f"Condition?code:not-in={NEURO},{DIPG}", ["stx-none", "stx-other", "stx-text"]),
    (f"Condition?code:not-in={NEURO}&code:not-in={DIPG}", ["stx-none", "stx-other", "stx-text"]),
    # :below / :above: the code itself and its descendants / ancestors
    (f"Procedure?code:below={SCT}|71388002", ["stx-biopsy", "stx-chemo", "stx-proc"]),
    (f"Procedure?code:below={SCT}|367336001", ["stx-chemo"]),
    (f"Procedure?code:above={SCT}|367336001", ["stx-chemo", "stx-proc"]),
    (f"Procedure?code:above={SCT}|71388002", ["stx-proc"]),
    (f"Procedure?code:below={SCT}|182353008,{SCT}|86273004", ["stx-biopsy", "stx-left"]),
    (f"Procedure?code:below={SCT}|71388002&code:above={SCT}|86273004", ["stx-biopsy", "stx-proc"]),
    (f"Condition?code:below={ICDO}|949-952", ["stx-gn", "stx-mixed", "stx-nb"]),
    (f"Condition?code:above={ICDO}|9500/3", ["stx-nb"]),
    # a code element (no system in the index) matches by code; a just-stored value set
    (f"Patient?gender:in={GENDER_VS}", ["stx-p1"]),
    (f"Patient?gender:not-in={GENDER_VS}", ["stx-p2", "stx-p3"]),
    # reverse chaining and chaining reach the same matcher
    (f"Patient?_has:Condition:subject:code:in={NEURO}", ["stx-p1", "stx-p3"]),
    (f"Patient?_has:Condition:subject:code:in={DIPG}", ["stx-p2"]),
    (f"Condition?subject:Patient.gender:in={GENDER_VS}", ["stx-gn", "stx-nb"]),
]


@pytest.mark.parametrize(("query", "expected"), CASES)
def test_modifier(loaded: TestClient, query: str, expected: list[str]) -> None:
    assert ids(loaded, query.replace("|", quote("|"))) == expected


ERRORS = [
    ("Condition?code:in=https://example.org/ValueSet/unknown", "not known"),
    ("Condition?code:in=ValueSet/unknown", "not known"),
    (f"Condition?code:in={NEURO}|9.9", "not known"),
    ("Condition?code:in=", "value set url"),
    (f"Procedure?code:below={SCT}|0000000", "not in code system"),
    ("Procedure?code:below=71388002", "system|code"),
    ("Procedure?code:below=https://example.org/cs|1", "not known"),
    (f"Observation?code:below={LOINC}|3124-5", "no hierarchy"),
]


@pytest.mark.parametrize(("query", "message"), ERRORS)
def test_invalid_value_is_400(loaded: TestClient, query: str, message: str) -> None:
    r = loaded.get(f"/fhir/{query}")
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert message in issue["diagnostics"]


def test_too_many_codes_is_refused(loaded: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(concepts, "MAX_CODES", 2)
    r = loaded.get(f"/fhir/Condition?code:in={NEURO}")
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["code"] == "too-costly"


def test_large_value_sets_are_chunked(loaded: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(concepts, "_CHUNK", 1)
    assert ids(loaded, f"Condition?code:in={NEURO}") == ["stx-gn", "stx-mixed", "stx-nb"]


def test_without_terminology_the_modifier_is_unsupported() -> None:
    compiler = SearchCompiler(base_registry(), "")
    crit = compiler.compile(
        "Condition", [("code:in", NEURO)], strict=False, default_count=10, max_count=10
    )
    assert [w.code for w in crit.warnings] == ["not-supported"]
    assert crit.where == []
