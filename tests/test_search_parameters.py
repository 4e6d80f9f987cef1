"""Custom SearchParameters and the resumable reindex job."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import select

from fhir_server.reindex import reindex
from fhir_server.schema import job
from tests.conftest import FHIR_JSON
from tests.test_operations import ROOT

H = {"Content-Type": FHIR_JSON}
TUMOUR = "https://primage.eu/fhir/StructureDefinition/tumour-type"


def tumour_patient(kind: str) -> dict:
    return {
        "resourceType": "Patient",
        "gender": "female",
        "extension": [{"url": TUMOUR, "valueCodeableConcept": {"coding": [{"code": kind}]}}],
    }


def search_parameter(code: str) -> dict:
    return {
        "resourceType": "SearchParameter",
        "url": f"https://primage.eu/fhir/SearchParameter/{code}",
        "name": code,
        "status": "active",
        "description": "Tumour type recorded on the patient (test parameter)",
        "code": code,
        "base": ["Patient"],
        "type": "token",
        "expression": f"Patient.extension.where(url='{TUMOUR}').value",
    }


def ids(client, query):
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return sorted(
        e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"
    )


def test_posted_search_parameter_works_after_reindex(app, client, backend):
    code = f"tumour-type-{backend}"
    before = client.post("/fhir/Patient", json=tumour_patient("NB"), headers=H).json()["id"]
    unknown = client.get(f"/fhir/Patient?{code}=NB", headers={"Prefer": "handling=strict"})
    assert unknown.status_code == 400

    assert (
        client.post("/fhir/SearchParameter", json=search_parameter(code), headers=H).status_code
        == 201
    )
    caps = client.get("/fhir/metadata").json()
    patient_caps = next(r for r in caps["rest"][0]["resource"] if r["type"] == "Patient")
    assert code in {p["name"] for p in patient_caps["searchParam"]}

    after = client.post("/fhir/Patient", json=tumour_patient("NB"), headers=H).json()["id"]
    assert ids(client, f"Patient?{code}=NB") == [after]  # new writes are indexed at once

    progress = list(
        reindex(app.state.database.write, app.state.indexer, types=("Patient",), params=(code,))
    )
    assert progress[-1].done == progress[-1].total
    assert ids(client, f"Patient?{code}=NB") == sorted([before, after])


def test_reindex_resumes_where_it_stopped(app, client):
    for _ in range(5):
        client.post(
            "/fhir/Practitioner",
            json={"resourceType": "Practitioner", "name": [{"family": "Resume"}]},
            headers=H,
        )
    args = {"types": ("Practitioner",), "batch": 2}
    first = reindex(app.state.database.write, app.state.indexer, **args)
    start = next(first)
    after_one_batch = next(first)
    assert after_one_batch.done == start.done + 2
    first.close()  # stopped: as if the process died after a committed batch

    resumed = list(reindex(app.state.database.write, app.state.indexer, **args))
    assert resumed[0].done == after_one_batch.done  # picks up the checkpoint
    assert resumed[-1].done == resumed[-1].total
    with app.state.database.read() as repo:
        statuses = (
            repo.conn.execute(select(job.c.status).where(job.c.kind == "reindex")).scalars().all()
        )
    assert "running" not in statuses
    assert ids(client, "Practitioner?family=resume")  # the index is intact afterwards


def test_cli_reindex(tmp_path):
    env = {**os.environ, "PRIMAGE_DATA_DIR": str(tmp_path)}
    env.pop("PRIMAGE_DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-m", "primage.cli", "demo", "load"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [sys.executable, "-m", "primage.cli", "search", "reindex"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    assert b"reindexed 13 resources" in out.stdout  # the bundle, ImagingStudy, Endpoint
