"""The operations against site isolation and scopes: a site never uses or is offered another
site's profiles, `$populate` reads the patient's data only with read and search scope on
what it reads, and malformed operation inputs are 400s, not 500s; on both databases."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from tests.conftest import FHIR_JSON, token_headers

H = {"Content-Type": FHIR_JSON}


def _profile(url: str, element: str, version: str = "1.0.0") -> dict[str, Any]:
    """A Patient profile that makes `element` required."""
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "version": version,
        "name": "TestPatient",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {
            "element": [
                {"id": "Patient", "path": "Patient"},
                {"id": f"Patient.{element}", "path": f"Patient.{element}", "min": 1},
            ]
        },
    }


def _post(web: TestClient, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return web.post(f"/fhir/{body['resourceType']}", json=body, headers={**headers, **H})


def _supported(web: TestClient, headers: dict[str, str]) -> set[str]:
    statement = web.get("/fhir/metadata", headers=headers).json()
    (patient,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Patient"]
    return set(patient.get("supportedProfile", []))


def test_a_sites_profiles_are_neither_offered_to_nor_used_by_another_site(
    auth_app: FastAPI, web: TestClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    a = token_headers(web, auth_app, "system/*.cruds", f"A{tag}")
    b = token_headers(web, auth_app, "system/*.cruds", f"B{tag}")
    admin = token_headers(web, auth_app, "system/*.cruds", None)
    platform_url = f"https://example.org/StructureDefinition/platform-{tag}"
    site_url = f"https://example.org/StructureDefinition/site-a-{tag}"
    assert _post(web, admin, _profile(platform_url, "birthDate")).status_code == 201
    assert _post(web, a, _profile(site_url, "gender")).status_code == 201
    # site A's attempt to take the platform's canonical with a later version
    assert _post(web, a, _profile(platform_url, "gender", "9.9.9")).status_code == 201

    # /metadata is public: it lists the platform's profiles, never a site's
    assert platform_url in _supported(web, {})
    assert site_url not in _supported(web, a)

    bare = {"resourceType": "Patient", "meta": {"profile": [site_url]}}
    assert _post(web, a, bare).status_code == 422  # A's own profile applies to A
    assert _post(web, b, bare).status_code == 201  # unknown to B: not checked
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": bare}]}
    outcome = web.post(f"/fhir/Patient/$validate?profile={site_url}", json=body, headers={**b, **H})
    assert outcome.status_code == 200
    assert [i["code"] for i in outcome.json()["issue"]] == ["not-found"]

    # the platform's profile stays the platform's, for every site and for the platform
    claims = {
        "resourceType": "Patient",
        "birthDate": "2015-01-01",
        "meta": {"profile": [platform_url]},
    }
    for headers in (a, b, admin):
        assert _post(web, headers, claims).status_code == 201
        without = {k: v for k, v in claims.items() if k != "birthDate"}
        assert _post(web, headers, without).status_code == 422


def _questionnaire(tag: str) -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "status": "active",
        "item": [
            {
                "linkId": "score",
                "type": "integer",
                "code": [{"system": "urn:test", "code": f"score-{tag}"}],
            }
        ],
    }


def _populate(web: TestClient, headers: dict[str, str], tag: str, subject: str) -> Any:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "questionnaire", "resource": _questionnaire(tag)},
            {"name": "subject", "valueReference": {"reference": subject}},
        ],
    }
    return web.post("/fhir/Questionnaire/$populate", json=body, headers={**headers, **H})


def _answers(reply: Any) -> list[Any]:
    response = reply.json()["parameter"][0]["resource"]
    return [i["answer"][0] for i in response.get("item", [])]


def test_populate_needs_read_and_search_on_what_it_reads_and_keeps_to_the_site(
    auth_app: FastAPI, web: TestClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    site_a, site_b = f"A{tag}", f"B{tag}"
    a = token_headers(web, auth_app, "system/*.cruds", site_a)
    b = token_headers(web, auth_app, "system/*.cruds", site_b)
    admin = token_headers(web, auth_app, "system/*.cruds", None)

    def observation(subject: str, value: int) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "urn:test", "code": f"score-{tag}"}]},
            "subject": {"reference": subject},
            "effectiveDateTime": "2023-01-01",
            "valueInteger": value,
        }

    pa = "Patient/" + _post(web, a, {"resourceType": "Patient"}).json()["id"]
    shared = "Patient/" + _post(web, admin, {"resourceType": "Patient"}).json()["id"]
    assert _post(web, a, observation(pa, 70)).status_code == 201
    assert _post(web, a, observation(shared, 80)).status_code == 201  # A's, on platform data

    assert _answers(_populate(web, a, tag, pa)) == [{"valueInteger": 70}]
    # the questionnaire's own scope does not open the Observations it reads
    for scope in (
        "system/Questionnaire.rs system/Patient.rs",
        "system/Questionnaire.rs system/Observation.rs",
    ):
        narrow = token_headers(web, auth_app, scope, site_a)
        assert _populate(web, narrow, tag, pa).status_code == 403, scope
    enough = token_headers(
        web, auth_app, "system/Questionnaire.rs system/Patient.rs system/Observation.rs", site_a
    )
    assert _answers(_populate(web, enough, tag, pa)) == [{"valueInteger": 70}]

    # another site: A's patient is not there, and A's data on a platform patient is not B's
    assert _populate(web, b, tag, pa).status_code == 404
    assert _answers(_populate(web, b, tag, shared)) == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/fhir/Patient/$validate", {"resourceType": "Parameters", "parameter": 5}),
        (
            "/fhir/ValueSet/$expand",
            {
                "resourceType": "Parameters",
                "parameter": [
                    {
                        "name": "valueSet",
                        "resource": {
                            "resourceType": "ValueSet",
                            "status": "active",
                            "compose": {"include": ["x"]},
                        },
                    }
                ],
            },
        ),
        (
            "/fhir/ValueSet/$expand",
            {
                "resourceType": "Parameters",
                "parameter": [
                    {
                        "name": "valueSet",
                        "resource": {
                            "resourceType": "ValueSet",
                            "status": "active",
                            "compose": {"include": [{"system": "urn:s", "concept": "x"}]},
                        },
                    }
                ],
            },
        ),
        ("/fhir/Questionnaire/$populate", "questionnaire items not a list"),
        ("/fhir/Questionnaire/$populate", "questionnaire item without linkId"),
    ],
)
def test_malformed_operation_inputs_are_400(client: TestClient, path: str, body: Any) -> None:
    if isinstance(body, str):
        subject = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=H)
        item: Any = "x" if "not a list" in body else [{"type": "integer"}]
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "questionnaire",
                    "resource": {"resourceType": "Questionnaire", "status": "active", "item": item},
                },
                {
                    "name": "subject",
                    "valueReference": {"reference": f"Patient/{subject.json()['id']}"},
                },
            ],
        }
    reply = client.post(path, json=body, headers=H)
    assert reply.status_code == 400, reply.text
    assert reply.json()["resourceType"] == "OperationOutcome"
