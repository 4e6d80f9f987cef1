"""What operators and clients see around the FHIR API: metadata, health, metrics, the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from sqlalchemy import func, select

from fhir_server import models
from fhir_server.schema import resource_version
from fhir_server.terminology import load
from primage.app import create_app
from primage.settings import Settings
from tests.conftest import FHIR_JSON, patient

ROOT = Path(__file__).resolve().parents[1]


def test_capability_statement_is_valid_and_truthful(client):
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    body = r.json()
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.3.0"
    assert body["format"] == ["application/fhir+json", "json"]
    rest = body["rest"][0]
    types = {res["type"] for res in rest["resource"]}
    assert types == set(models.resource_types())
    assert {"Patient", "Observation", "ImagingStudy", "Questionnaire"} <= types
    assert "Resource" not in types and "DomainResource" not in types
    patient_caps = next(res for res in rest["resource"] if res["type"] == "Patient")
    assert {i["code"] for i in patient_caps["interaction"]} >= {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "create",
    }
    names = {p["name"] for p in patient_caps["searchParam"]}
    assert {"_id", "_lastUpdated", "identifier", "family", "birthdate", "gender"} <= names
    assert "Patient:general-practitioner" in patient_caps["searchInclude"]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}


CORE_OPS = "http://hl7.org/fhir/OperationDefinition/"
SDC_OPS = "http://hl7.org/fhir/uv/sdc/OperationDefinition/"
PRIMAGE_SD = "https://primage.eu/fhir/StructureDefinition/"


def _capabilities(client) -> dict[str, dict]:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    CapabilityStatement.model_validate(r.json())
    return {res["type"]: res for res in r.json()["rest"][0]["resource"]}


def _operations(caps: dict) -> dict[str, str]:
    return {op["name"]: op["definition"] for op in caps.get("operation", [])}


def test_capability_statement_lists_the_operations_served(app, client):
    by_type = _capabilities(client)
    assert _operations(by_type["ValueSet"])["expand"] == CORE_OPS + "ValueSet-expand"
    assert _operations(by_type["ValueSet"])["validate-code"] == CORE_OPS + "ValueSet-validate-code"
    assert _operations(by_type["CodeSystem"]) == {
        "lookup": CORE_OPS + "CodeSystem-lookup",
        "validate-code": CORE_OPS + "CodeSystem-validate-code",
        "subsumes": CORE_OPS + "CodeSystem-subsumes",
        "validate": CORE_OPS + "Resource-validate",
    }
    assert _operations(by_type["ConceptMap"])["translate"] == CORE_OPS + "ConceptMap-translate"
    for type_ in ("Patient", "Observation", "Basic"):  # $validate: every type
        assert _operations(by_type[type_]) == {"validate": CORE_OPS + "Resource-validate"}
    assert _operations(by_type["QuestionnaireResponse"])["extract"] == (
        SDC_OPS + "QuestionnaireResponse-extract"
    )
    assert _operations(by_type["Questionnaire"])["populate"] == SDC_OPS + "Questionnaire-populate"
    # exactly the router's table: nothing declared that is not served, and the reverse
    table = app.state.fhir.interactions.options.operations
    declared = {
        (type_, f"${name}") for type_, caps in by_type.items() for name in _operations(caps)
    }
    served = {
        (type_, name)
        for key_type, name in table
        for type_ in (by_type if key_type == "*" else [key_type])
    }
    assert declared == served


def test_capability_statement_lists_the_stored_profiles(app, client):
    shipped = load.shipped(app.state.settings.mappings_dir)
    load.load(app.state.database.write, load.read_all(shipped))
    by_type = _capabilities(client)
    assert PRIMAGE_SD + "PrimageINRGStage" in by_type["Observation"]["supportedProfile"]
    assert PRIMAGE_SD + "PrimagePatient" in by_type["Patient"]["supportedProfile"]
    profiles = [url for caps in by_type.values() for url in caps.get("supportedProfile", [])]
    assert len(profiles) == len(set(profiles))  # one entry per url, not per url|version
    assert "supportedProfile" not in by_type["Basic"]

    # kept in step with the store: a profile stored (then deleted) shows (then goes)
    url = "https://example.org/fhir/StructureDefinition/CapabilityTestBasic"
    sd = {
        "resourceType": "StructureDefinition",
        "id": "capability-test-basic",
        "url": url,
        "name": "CapabilityTestBasic",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Basic",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Basic",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Basic.subject", "path": "Basic.subject", "min": 1}]},
    }
    r = client.put("/fhir/StructureDefinition/capability-test-basic", json=sd)
    assert r.status_code in (200, 201), r.text
    try:
        assert _capabilities(client)["Basic"]["supportedProfile"] == [url]
    finally:
        client.delete("/fhir/StructureDefinition/capability-test-basic")
    assert "supportedProfile" not in _capabilities(client)["Basic"]


def test_every_declared_type_accepts_a_minimal_create(client):
    # The statement says every type can be created: check a sample that needs no elements.
    for type_ in ("Basic", "Binary", "Bundle", "Library", "Parameters"):
        body = {"resourceType": type_}
        if type_ == "Basic":
            body["code"] = {"text": "x"}
        if type_ == "Binary":
            body["contentType"] = "text/plain"
        if type_ == "Bundle":
            body["type"] = "collection"
        if type_ == "Library":
            body |= {"status": "draft", "type": {"text": "x"}}
        r = client.post(f"/fhir/{type_}", json=body, headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 201, (type_, r.text)


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_unreachable_database(tmp_path):
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none?connect_timeout=1",
        secret_key="x",
        auth_enabled=False,
    )
    from starlette.testclient import TestClient

    with TestClient(create_app(settings)) as client:
        r = client.get("/healthz")
        read = client.get("/fhir/Patient/p1")
    assert r.status_code == 503
    assert r.json()["database"] == "unreachable"
    # a FHIR interaction on a database that is down is a transient 503, not a bare 500
    assert read.status_code == 503
    assert read.headers["Retry-After"] == "1"
    assert read.json()["issue"][0]["code"] == "transient"


def test_metrics_count_requests_by_route_and_status(client):
    client.get("/fhir/Patient/metrics-probe-missing")
    client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR_JSON})
    text = client.get("/metrics").text
    assert 'primage_http_requests_total{method="GET",route="fhir:read",status="404"}' in text
    assert 'primage_http_requests_total{method="POST",route="fhir:create",status="201"}' in text
    assert (
        'primage_http_request_duration_seconds_bucket{le="0.005",method="POST",route="fhir:create"}'
        in text
    )


def test_unexpected_errors_are_500_operation_outcome_without_trace(app, client, monkeypatch):
    def boom(*_args, **_kwargs):
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(app.state.fhir.interactions, "run", boom)
    from starlette.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/fhir/Patient/x")
    assert r.status_code == 500
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "secret-internal-detail" not in r.text and "Traceback" not in r.text


def test_stored_rows_hold_the_served_json(app, client):
    created = client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR_JSON})
    pid = created.json()["id"]
    with app.state.database.read() as repo:
        rows = repo.conn.execute(
            select(resource_version.c.version, resource_version.c.content).where(
                resource_version.c.id == pid
            )
        ).all()
        total = repo.conn.execute(select(func.count()).select_from(resource_version)).scalar_one()
    assert rows == [(1, created.content)]
    assert total >= 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serve_migrates_loads_demo_and_serves(tmp_path):
    """What `make run` does: migrate the embedded SQLite store, load demo data, serve."""
    port = _free_port()
    env = {
        **os.environ,
        "PRIMAGE_DATA_DIR": str(tmp_path / "var"),
        "PRIMAGE_DEMO_DATA": "true",
        "PRIMAGE_AUDIT_INDEX_INTERVAL": "0.5",
    }
    env.pop("PRIMAGE_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "primage.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("primage serve did not come up")
        assert httpx.get(f"{base}/fhir/Patient").status_code == 401  # auth is on
        demo = json.loads((tmp_path / "var" / "demo-clients.json").read_text())
        researcher = demo["demo-researcher"]
        token = httpx.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "system/*.rs"},
            auth=(researcher["client_id"], researcher["client_secret"]),
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        patients = httpx.get(f"{base}/fhir/Patient", headers=auth).json()
        assert patients["total"] == 3
        assert (tmp_path / "var" / "primage.db").exists()
        studies = httpx.get(
            f"{base}/dicomweb/studies", params={"PatientID": "PRI-7K3Q-9XW2"}, headers=auth
        )
        assert studies.json()[0]["00201208"]["Value"] == [24]
        session = requests.Session()  # what imaging tools use (it sends Host without a port)
        session.headers["Authorization"] = f"Bearer {token}"
        found = DICOMwebClient(f"{base}/dicomweb", session=session).search_for_studies(
            search_filters={"PatientID": "PRI-7K3Q-9XW2"}
        )
        assert len(found) == 1
        linked = httpx.get(
            f"{base}/fhir/ImagingStudy",
            params={"patient.identifier": "PRI-7K3Q-9XW2"},
            headers=auth,
        ).json()
        assert linked["total"] == 2  # the demo bundle's own ImagingStudy and the DICOM one
        assert httpx.get(f"{base}/fhir/Patient", headers=auth).json()["total"] == 3
        hospital = demo["demo-hospital"]  # a site: its writes pass the gateway
        token = httpx.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
            auth=(hospital["client_id"], hospital["client_secret"]),
        ).json()["access_token"]
        child = {
            "resourceType": "Patient",
            "id": "MRN-77",
            "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-77"}],
            "name": [{"family": "Dupont", "given": ["Léa"]}],
            "birthDate": "2017-05-02",
            "gender": "female",
        }
        stored = httpx.put(
            f"{base}/fhir/Patient/MRN-77", json=child, headers={"Authorization": f"Bearer {token}"}
        )
        assert stored.status_code == 201, stored.text
        assert "name" not in stored.json()
        assert stored.json()["identifier"][0]["value"].startswith("PRM-")
        # Nobody reads AuditEvents here: serve's background process indexes the staged ones.
        store = sqlite3.connect(tmp_path / "var" / "primage.db")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            staged = store.execute("SELECT count(*) FROM audit_staging").fetchone()[0]
            (indexed,) = store.execute(
                "SELECT count(*) FROM resource WHERE type = 'AuditEvent'"
            ).fetchone()
            if staged == 0 and indexed == 6:  # 5 reads and searches (staged), 1 write
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{staged} audit events still staged, {indexed} indexed")
        store.close()
        helper = subprocess.run(
            ["pgrep", "-P", str(proc.pid), "-f", "primage.cli background"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert len(helper) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=20)[0].decode()
    with pytest.raises(ProcessLookupError):  # stopped with the server, not orphaned
        os.kill(int(helper[0]), 0)
    assert f"http://127.0.0.1:{port}/fhir/metadata" in output
    assert "demo data: 11 resources and a study of 24 instances loaded" in output
    assert f"http://127.0.0.1:{port}/dicomweb/studies" in output
    assert f"http://127.0.0.1:{port}/oauth/token" in output


def test_cli_db_upgrade(tmp_path):
    env = {**os.environ, "PRIMAGE_DATA_DIR": str(tmp_path)}
    env.pop("PRIMAGE_DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "primage.cli", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
    )
    assert b"latest schema" in out.stdout
    assert (tmp_path / "primage.db").exists()


def test_logs_never_quote_the_payload(client, caplog):
    caplog.set_level("DEBUG")
    marker = "Yamada-Tarou-4711"
    client.post(
        "/fhir/Patient",
        json=patient(name=[{"family": marker}], birthDate="2016-02-30"),
        headers={"Content-Type": FHIR_JSON},
    )
    client.put("/fhir/Patient/p1", json=patient(id="x", name=[{"family": marker}]))
    server = [r for r in caplog.records if not r.name.startswith("httpx")]  # not the client's
    assert len(server) >= 2  # the failures were logged ...
    assert not any(marker in r.getMessage() for r in server)  # ... without their data
