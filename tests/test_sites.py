"""Site isolation: a site client sees and changes only its own site's data (and reads the
platform's), through every side door; a researcher without a site reads everything."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from pydicom import Dataset
from starlette.testclient import TestClient

from primage.app import create_app
from primage.settings import Settings
from tests import dicom_data as data
from tests.conftest import token_headers

SITE_TAG = "https://primage.eu/fhir/CodeSystem/site"


@pytest.fixture(scope="module")
def app(auth_app: FastAPI) -> FastAPI:
    return auth_app


@pytest.fixture(scope="module")
def world(web: TestClient, app: FastAPI) -> dict[str, Any]:
    """Site A and site B, each with a patient and an observation; B's second observation
    points at A's patient and A's second at B's (references are not checked across sites);
    plus platform data written by an administrator."""
    tag = uuid.uuid4().hex[:8]
    a = token_headers(web, app, "system/*.cruds", f"A{tag}")
    b = token_headers(web, app, "system/*.cruds", f"B{tag}")
    admin = token_headers(web, app, "system/*.cruds", None)
    researcher = token_headers(web, app, "system/*.rs", None)

    def create(headers: dict[str, str], body: dict[str, Any]) -> str:
        r = web.post(f"/fhir/{body['resourceType']}", json=body, headers=headers)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def observation(subject: str, code: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "urn:test", "code": code}]},
            "subject": {"reference": f"Patient/{subject}"},
        }

    family = f"Fam{tag}"
    pa = create(a, {"resourceType": "Patient", "gender": "female", "name": [{"family": family}]})
    pb = create(b, {"resourceType": "Patient", "gender": "male", "name": [{"family": family}]})
    oa = create(a, observation(pa, f"a-{tag}"))
    ob = create(b, observation(pb, f"b-{tag}"))
    ob_on_pa = create(b, observation(pa, f"secret-{tag}"))
    oa_on_pb = create(a, observation(pb, f"a2-{tag}"))
    platform = create(admin, {"resourceType": "Patient", "name": [{"family": family}]})
    studies = {}
    for site, headers in (("a", a), ("b", b)):
        study = data.study(ct=2, mr=0, patient_id=f"PAT-{site}-{tag}")
        r = web.post(
            "/dicomweb/studies",
            content=data.multipart([data.part10(ds) for ds in study]),
            headers={**headers, "Content-Type": data.stow_type()},
        )
        assert r.status_code == 200
        studies[site] = study
    return {
        "a": a,
        "b": b,
        "admin": admin,
        "researcher": researcher,
        "tag": tag,
        "family": family,
        "pa": pa,
        "pb": pb,
        "oa": oa,
        "ob": ob,
        "ob_on_pa": ob_on_pa,
        "oa_on_pb": oa_on_pb,
        "platform": platform,
        "studies": studies,
    }


def _ids(web: TestClient, query: str, headers: dict[str, str]) -> set[str]:
    r = web.get(f"/fhir/{query}", headers=headers)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if "resource" in e}


def test_reads_of_another_sites_resource_are_404(web: TestClient, world: dict) -> None:
    a, pb = world["a"], world["pb"]
    assert web.get(f"/fhir/Patient/{world['pa']}", headers=a).status_code == 200
    for path in (f"Patient/{pb}", f"Patient/{pb}/_history/1", f"Patient/{pb}/_history"):
        assert web.get(f"/fhir/{path}", headers=a).status_code == 404, path


def test_search_sees_own_and_platform_data(web: TestClient, world: dict) -> None:
    a, family = world["a"], world["family"]
    assert _ids(web, f"Patient?family={family}", world["a"]) == {world["pa"], world["platform"]}
    assert _ids(web, f"Patient?_id={world['pb']}", a) == set()
    total = web.get(f"/fhir/Patient?family={family}&_summary=count", headers=a).json()["total"]
    assert total == 2
    everything = _ids(web, f"Patient?family={family}", world["researcher"])
    assert everything == {world["pa"], world["pb"], world["platform"]}


def test_includes_do_not_leak(web: TestClient, world: dict) -> None:
    a = world["a"]
    rev = _ids(web, f"Patient?_id={world['pa']}&_revinclude=Observation:subject", a)
    assert world["ob_on_pa"] not in rev and world["oa"] in rev
    fwd = _ids(web, f"Observation?_id={world['oa_on_pb']}&_include=Observation:subject", a)
    assert fwd == {world["oa_on_pb"]}  # B's patient is not included


def test_chains_and_has_do_not_leak(web: TestClient, world: dict) -> None:
    a, tag = world["a"], world["tag"]
    # A's observation points at B's (male) patient: a chain must not reveal B's data
    assert _ids(web, f"Observation?code=urn:test|a2-{tag}&subject:Patient.gender=male", a) == set()
    assert _ids(web, f"Observation?code=urn:test|a2-{tag}", a) == {world["oa_on_pb"]}
    # B's observation points at A's patient: _has must not reveal B's codes
    assert _ids(web, f"Patient?_has:Observation:subject:code=urn:test|secret-{tag}", a) == set()
    researcher = world["researcher"]
    found = _ids(web, f"Patient?_has:Observation:subject:code=urn:test|secret-{tag}", researcher)
    assert found == {world["pa"]}


def test_history_shows_only_own_versions(web: TestClient, world: dict) -> None:
    bundle = web.get("/fhir/Patient/_history?_count=500", headers=world["a"]).json()
    ids = {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e}
    assert world["pb"] not in ids and world["pa"] in ids


@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("update", 404),  # as if it were not there: a write must not reveal it exists
        ("patch", 404),
        ("delete", 204),  # deleting what is not there is a no-op
        ("transaction", 404),
        ("platform", 403),  # platform data the site can see, but not change
    ],
)
def test_writes_to_another_sites_resources_are_refused(
    web: TestClient, world: dict, how: str, status: int
) -> None:
    a, pb = world["a"], world["pb"]
    body = {"resourceType": "Patient", "id": pb, "gender": "other"}
    if how == "update":
        r = web.put(f"/fhir/Patient/{pb}", json=body, headers=a)
    elif how == "patch":
        ops = '[{"op": "replace", "path": "/gender", "value": "other"}]'
        headers = {**a, "Content-Type": "application/json-patch+json"}
        r = web.patch(f"/fhir/Patient/{pb}", content=ops, headers=headers)
    elif how == "delete":
        r = web.delete(f"/fhir/Observation/{world['ob']}", headers=a)
    elif how == "transaction":
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": body, "request": {"method": "PUT", "url": f"Patient/{pb}"}}],
        }
        r = web.post("/fhir", json=bundle, headers=a)
    else:
        platform = {"resourceType": "Patient", "id": world["platform"]}
        r = web.put(f"/fhir/Patient/{world['platform']}", json=platform, headers=a)
    assert r.status_code == status, r.text
    after = web.get(f"/fhir/Patient/{pb}", headers=world["b"]).json()
    assert after["gender"] == "male"
    assert web.get(f"/fhir/Observation/{world['ob']}", headers=world["b"]).status_code == 200


def test_stored_resources_carry_their_site(web: TestClient, world: dict) -> None:
    patient = web.get(f"/fhir/Patient/{world['pa']}", headers=world["researcher"]).json()
    assert {"system": SITE_TAG, "code": f"A{world['tag']}"} in patient["meta"]["tag"]
    spoof = {
        "resourceType": "Patient",
        "meta": {"tag": [{"system": SITE_TAG, "code": f"B{world['tag']}"}]},
    }
    made = web.post("/fhir/Patient", json=spoof, headers=world["a"]).json()
    assert made["meta"]["tag"] == [{"system": SITE_TAG, "code": f"A{world['tag']}"}]


def _uid(study: list[Dataset]) -> str:
    return study[0].StudyInstanceUID


def test_dicomweb_is_isolated_by_site(web: TestClient, world: dict) -> None:
    a, b = world["a"], world["b"]
    mine, theirs = world["studies"]["a"], world["studies"]["b"]
    found = {s["0020000D"]["Value"][0] for s in web.get("/dicomweb/studies", headers=a).json()}
    assert _uid(mine) in found and _uid(theirs) not in found
    for path in ("", "/metadata", "/series", "/thumbnail"):
        url = f"/dicomweb/studies/{_uid(theirs)}{path}"
        accept = "image/jpeg" if path == "/thumbnail" else "*/*"
        assert web.get(url, headers={**a, "Accept": accept}).status_code == 404, path
    one = theirs[0]
    frame = (
        f"/dicomweb/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
        f"/instances/{one.SOPInstanceUID}/frames/1"
    )
    assert web.get(frame, headers=a).status_code == 404
    assert web.get(f"/fhir/ImagingStudy/{_uid(theirs)}", headers=a).status_code == 404
    everything = web.get("/dicomweb/studies", headers=world["researcher"]).json()
    assert {_uid(mine), _uid(theirs)} <= {s["0020000D"]["Value"][0] for s in everything}
    assert web.delete(f"/dicomweb/studies/{_uid(theirs)}", headers=a).status_code == 404
    assert web.get(f"/dicomweb/studies/{_uid(theirs)}/metadata", headers=b).status_code == 200


def test_stow_into_another_sites_study_is_refused(web: TestClient, world: dict) -> None:
    theirs = world["studies"]["b"]
    intruder = data.image(_uid(theirs), theirs[0].SeriesInstanceUID, 9)
    again = theirs[0]  # the same bytes B stored: must not be acknowledged to A either
    r = web.post(
        "/dicomweb/studies",
        content=data.multipart([data.part10(intruder), data.part10(again)]),
        headers={**world["a"], "Content-Type": data.stow_type()},
    )
    assert r.status_code == 409
    reasons = [i.FailureReason for i in Dataset.from_json(r.json()).FailedSOPSequence]
    assert reasons == [0xA900, 0xA900]
    count = web.get(
        f"/dicomweb/studies?StudyInstanceUID={_uid(theirs)}", headers=world["b"]
    ).json()[0]["00201208"]["Value"]
    assert count == [2]


def test_tokens_from_an_external_openid_provider(settings: Settings, tmp_path, world: dict) -> None:
    """A hospital's Keycloak (here: a key of the test's own) issues the token; its site
    claim puts the caller in that site, its scope claim says what it may do."""
    import time

    from joserfc import jwt
    from joserfc.jwk import RSAKey

    issuer = "https://keycloak.hospital.example/realms/primage"
    key = RSAKey.generate_key(2048, parameters={"kid": "kc"})
    jwks = tmp_path / "keycloak-jwks.json"
    jwks.write_text(orjson.dumps({"keys": [key.as_dict(private=False)]}).decode())
    app = create_app(
        settings.model_copy(
            update={
                "auth_enabled": True,
                "oidc_issuer": issuer,
                "oidc_jwks_file": jwks,
                "oidc_audience": "primage",
                "oidc_site_claim": "hospital",
            }
        )
    )

    def token(signer: RSAKey = key, **claims: Any) -> dict[str, str]:
        now = int(time.time())
        body = {
            "iss": issuer,
            "aud": "primage",
            "sub": "user-1",
            "azp": "hospital-portal",
            "exp": now + 300,
            "scope": "system/Patient.rs",
            "hospital": f"A{world['tag']}",
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        signed = jwt.encode({"alg": "RS256", "kid": "kc"}, body, signer)
        return {"Authorization": f"Bearer {signed}"}

    with TestClient(app, base_url="http://testserver") as web:
        family = world["family"]
        assert _ids(web, f"Patient?family={family}", token()) == {world["pa"], world["platform"]}
        assert web.get("/fhir/Observation", headers=token()).status_code == 403  # scope
        stranger = RSAKey.generate_key(2048, parameters={"kid": "kc"})
        for bad in (
            token(aud="someone-else"),
            token(stranger),
            token(exp=int(time.time()) - 99),
            token(hospital=None),  # no site claim: it would otherwise see every site
        ):
            assert web.get("/fhir/Patient", headers=bad).status_code == 401
        # the provider cannot grant more than the deployment allows (system/*.rs)
        wide = token(scope="system/*.cruds")
        assert web.get("/fhir/Patient", headers=wide).status_code == 200
        assert (
            web.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=wide).status_code
            == 403
        )
    app.state.database.engine.dispose()


def test_audit_events_belong_to_the_callers_site(
    web: TestClient, app: FastAPI, world: dict
) -> None:
    web.get(f"/fhir/Patient/{world['pa']}", headers=world["a"])  # a queued (read) event
    app.state.audit.flush()
    tag = world["tag"]
    own = token_headers(web, app, "primage/audit.read", f"A{tag}")
    other = token_headers(web, app, "primage/audit.read", f"B{tag}")
    query = f"AuditEvent?entity=Patient/{world['pa']}&subtype=read"
    mine = web.get(f"/fhir/{query}", headers=own).json().get("entry", [])
    assert mine and all(
        {"system": SITE_TAG, "code": f"A{tag}"} in e["resource"]["meta"]["tag"] for e in mine
    )
    assert web.get(f"/fhir/{query}", headers=other).json().get("entry", []) == []


def test_a_paging_link_works_only_for_the_view_it_was_made_for(
    web: TestClient, world: dict
) -> None:
    everything = web.get(
        f"/fhir/Patient?family={world['family']}&_count=1", headers=world["researcher"]
    ).json()
    link = next(x["url"] for x in everything["link"] if x["relation"] == "next")
    path = link.split("http://testserver")[-1]
    assert web.get(path, headers=world["researcher"]).status_code == 200
    assert web.get(path, headers=world["a"]).status_code == 400


def test_site_clients_cannot_write_platform_types(web: TestClient, world: dict) -> None:
    a = world["a"]
    parameter = {
        "resourceType": "SearchParameter",
        "url": "urn:x",
        "name": "x",
        "status": "active",
        "description": "x",
        "code": "identifier",
        "base": ["Patient"],
        "type": "token",
        "expression": "Patient.gender",
    }
    assert web.post("/fhir/SearchParameter", json=parameter, headers=a).status_code == 403
    endpoint = {
        "resourceType": "Endpoint",
        "id": "dicomweb",
        "status": "active",
        "connectionType": {"code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}],
        "address": "https://evil.example",
    }
    assert web.put("/fhir/Endpoint/dicomweb", json=endpoint, headers=a).status_code == 403
    study = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": "Patient/x"},
    }
    assert web.post("/fhir/ImagingStudy", json=study, headers=a).status_code == 403
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": parameter, "request": {"method": "POST", "url": "SearchParameter"}}],
    }
    assert web.post("/fhir", json=bundle, headers=a).status_code == 403


def test_include_iterate_does_not_step_through_unreadable_types(
    web: TestClient, app: FastAPI, world: dict
) -> None:
    token = token_headers(web, app, "system/Observation.rs", f"A{world['tag']}")
    sibling = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "sibling"},
        "subject": {"reference": f"Patient/{world['pa']}"},
    }
    other = web.post("/fhir/Observation", json=sibling, headers=world["a"]).json()["id"]
    query = (
        f"Observation?_id={world['oa']}&_include=Observation:subject"
        "&_revinclude:iterate=Observation:subject"
    )
    found = _ids(web, query, token)
    # no Patient scope: the patient is neither returned nor a step to its other observations
    assert world["pa"] not in found and other not in found
    assert found == {world["oa"]}
