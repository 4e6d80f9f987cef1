"""Automatic feeding (issue 8): importers, their ledger, resume, dry runs, against the real app.

The platform runs with OAuth2, the gateway and the identified-data guard on, served over
HTTP; the importer is the `primage import` CLI with a site's client credentials, as at a
hospital's edge. Its ledger lives in its own data directory.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from pydicom import Dataset
from sqlalchemy import func, select

from curation import runner
from curation.destination import StowDestination
from curation.folder import FolderSource
from curation.ledger import FAILED, PENDING, PRESENT, QUARANTINED, STORED, Ledger
from dicomweb.schema import dicom_instance
from primage import db
from primage.cli import main
from primage.settings import Settings
from tests import dicom_data as data
from tests.conftest import gateway_platform, platform_env, serving

SYSTEM = "https://primage.eu/fhir/NamingSystem/research-pseudonym"


@pytest.fixture(scope="module")
def platform(
    settings: Settings, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    yield from gateway_platform(settings, database_url, tmp_path_factory, "import")


@pytest.fixture(scope="module")
def base(platform: FastAPI) -> Iterator[str]:
    yield from serving(platform)


def _client(app: FastAPI, scope: str, site: str | None) -> tuple[str, str]:
    client, secret = app.state.auth.clients.add(f"import-{site}", scope, site)
    return client.client_id, secret


@pytest.fixture(scope="module")
def hospital(platform: FastAPI) -> tuple[str, str]:
    return _client(platform, "system/ImagingStudy.c", "IMPORT-HOSPITAL")


@pytest.fixture(scope="module")
def researcher(platform: FastAPI, base: str) -> dict[str, str]:
    client_id, secret = _client(platform, "system/*.rs", None)
    token = httpx.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client_id, secret),
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def _write(folder: Path, datasets: list[Dataset]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(data.part10(ds))


def _source_tree(root: Path, patient: str) -> dict[str, Any]:
    """Two studies in folders, one in a zip, one burned-in screenshot, and a stray file."""
    first = data.study(ct=4, mr=3, patient_id=patient, patient_name="Kowalczyk^Zofia")
    second = data.study(ct=5, mr=0, patient_id=patient, patient_name="Kowalczyk^Zofia")
    zipped = data.study(ct=3, mr=2, patient_id=f"{patient}-B", patient_name="Nowak^Jan")
    burned = data.image(first[0].StudyInstanceUID, first[0].SeriesInstanceUID, 99)
    burned.PatientID, burned.PatientName = patient, "Kowalczyk^Zofia"
    burned.BurnedInAnnotation = "YES"
    _write(root / "a" / "b", [*first, burned])
    _write(root / "c", second)
    with zipfile.ZipFile(root / "c" / "more.zip", "w") as archive:
        for ds in zipped:
            archive.writestr(f"dir/{ds.SOPInstanceUID}", data.part10(ds))
    (root / "notes.txt").write_text("not DICOM")
    every = first + second + zipped
    return {
        "stored": {str(ds.SOPInstanceUID) for ds in every},
        "quarantined": {str(burned.SOPInstanceUID)},
        "studies": {str(ds.StudyInstanceUID) for ds in every},
    }


def _import(tmp: Path, args: list[str], hospital: tuple[str, str]) -> Any:
    env = {
        "PRIMAGE_DATA_DIR": str(tmp / "edge"),
        "PRIMAGE_IMPORT_CLIENT_ID": hospital[0],
        "PRIMAGE_IMPORT_CLIENT_SECRET": hospital[1],
    }
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def assert_previewed_not_sent(
    report: Path, output: str, identifying: list[str], sent_before: int, sent_now: int, tmp: Path
) -> None:
    """A dry run's report shows what de-identification would do (one burned-in object
    quarantined), its output nothing `identifying`, and nothing was sent or planned."""
    deid = json.loads(report.read_text())["deidentification"]
    changed = set(deid["replaced"]) | set(deid["removed"])
    assert {"PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID"} <= changed
    assert "ReferringPhysicianName" in changed
    assert list(deid["quarantined"].values()) == [1]
    for text in identifying:
        assert text not in output
    assert sent_now == sent_before
    assert not (tmp / "edge" / "imports.db").exists()


def linked_pseudonym(base: str, headers: dict[str, str], study_uid: str) -> str:
    """The research pseudonym of the Patient that the study's ImagingStudy names."""
    linked = httpx.get(
        f"{base}/fhir/ImagingStudy",
        params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"},
        headers=headers,
    ).json()
    assert linked["total"] == 1
    subject = linked["entry"][0]["resource"]["subject"]["reference"]
    patient = httpx.get(f"{base}/fhir/{subject}", headers=headers).json()
    return str(patient["identifier"][0]["value"])


def _platform_instances(app: FastAPI) -> int:
    with app.state.database.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(dicom_instance)).scalar_one())


def test_folder_import_stores_every_instance_pseudonymised(
    platform: FastAPI, base: str, hospital: tuple[str, str], researcher: dict, tmp_path: Path
) -> None:
    tree = _source_tree(tmp_path / "source", "MRN-IMP-1")
    before = _platform_instances(platform)
    report = tmp_path / "report.json"
    result = _import(
        tmp_path,
        [
            "import",
            "folder",
            str(tmp_path / "source"),
            "--to",
            f"{base}/dicomweb",
            "--report",
            str(report),
            "--batch",
            "4",
        ],
        hospital,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["status"] == "done"
    assert summary["counts"][STORED]["items"] == len(tree["stored"])
    assert summary["counts"][QUARANTINED]["items"] == 1
    assert summary["counts"][FAILED]["items"] == 0
    [problem] = summary["problems"]
    assert problem["key"] in tree["quarantined"] and "BurnedInAnnotation" in problem["reason"]
    assert _platform_instances(platform) - before == len(tree["stored"])
    # what the platform serves: pseudonyms, no original UID, the studies linked to Patients
    studies = httpx.get(f"{base}/dicomweb/studies", headers=researcher).json()
    mine = [s for s in studies if s["00100020"]["Value"][0].startswith("PRM-")]
    served_uids = {s["0020000D"]["Value"][0] for s in studies}
    assert not served_uids & tree["studies"]
    assert len(mine) >= 3
    for study in mine:
        pseudonym = study["00100020"]["Value"][0]
        linked = httpx.get(
            f"{base}/fhir/ImagingStudy",
            params={"identifier": f"urn:dicom:uid|urn:oid:{study['0020000D']['Value'][0]}"},
            headers=researcher,
        ).json()
        if linked.get("total"):
            subject = linked["entry"][0]["resource"]["subject"]["reference"]
            patient = httpx.get(f"{base}/fhir/{subject}", headers=researcher).json()
            assert patient["identifier"][0]["value"] == pseudonym


def test_the_same_import_again_sends_nothing(
    platform: FastAPI, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    tree = _source_tree(tmp_path / "source", "MRN-IMP-2")
    args = ["import", "folder", str(tmp_path / "source"), "--to", f"{base}/dicomweb"]
    assert _import(tmp_path, args, hospital).exit_code == 0
    stored = _platform_instances(platform)
    report = tmp_path / "again.json"
    result = _import(tmp_path, [*args, "--report", str(report)], hospital)
    assert result.exit_code == 0, result.output
    counts = json.loads(report.read_text())["counts"]
    assert counts[PRESENT]["items"] == len(tree["stored"])
    assert counts[STORED]["items"] == 0
    assert _platform_instances(platform) == stored


class _Killed(Exception):
    pass


def edge_ledger(tmp: Path) -> Ledger:
    """The importer's ledger, in its data directory at the hospital's edge."""
    return Ledger(db.make_engine(Settings(data_dir=tmp / "edge").import_database(), 2))


def run_until_killed(
    base: str, hospital: tuple[str, str], ledger: Ledger, job: Any, source: Any, batch: int
) -> None:
    """Runs `job` to the platform at `base` until the importer dies in its second batch."""
    sent: list[int] = []

    class Dying(StowDestination):
        def send(self, parts: Any) -> Any:
            if sent:
                raise _Killed
            sent.append(len(parts))
            return super().send(parts)

    with httpx.Client(timeout=60) as http:
        token = http.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "system/ImagingStudy.c"},
            auth=hospital,
        ).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        with pytest.raises(_Killed):
            runner.run(ledger, job, source, Dying(f"{base}/dicomweb", http), batch=batch)


def test_a_killed_import_resumes_and_stores_exactly_the_source(
    platform: FastAPI, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    tree = _source_tree(tmp_path / "source", "MRN-IMP-3")
    before = _platform_instances(platform)
    ledger = edge_ledger(tmp_path)
    source = FolderSource(tmp_path / "source")
    job = ledger.create("folder", source.spec(), f"{base}/dicomweb")
    run_until_killed(base, hospital, ledger, job, source, batch=5)
    counts = ledger.counts(job.id)
    assert counts[STORED]["items"] + counts[QUARANTINED]["items"] == 5
    assert counts[PENDING]["items"] == len(tree["stored"]) + 1 - 5
    result = _import(tmp_path, ["jobs", "resume", str(job.id), "--batch", "3"], hospital)
    assert result.exit_code == 0, result.output
    counts = ledger.counts(job.id)
    assert counts[STORED]["items"] == len(tree["stored"])
    assert counts[QUARANTINED]["items"] == 1
    assert counts[PENDING]["items"] == counts[FAILED]["items"] == 0
    assert ledger.job(job.id).status == "done"
    assert _platform_instances(platform) - before == len(tree["stored"])


def test_dry_run_lists_and_previews_without_sending(
    platform: FastAPI, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    _source_tree(tmp_path / "source", "MRN-IMP-4")
    before = _platform_instances(platform)
    report = tmp_path / "dry.json"
    result = _import(
        tmp_path,
        [
            "import",
            "folder",
            str(tmp_path / "source"),
            "--to",
            f"{base}/dicomweb",
            "--dry-run",
            "--report",
            str(report),
        ],
        hospital,
    )
    assert result.exit_code == 0, result.output
    assert "would import 18 instances" in result.output
    assert "2 patients, 3 studies, 5 series" in result.output
    identifying = ["Kowalczyk", "MRN-IMP-4"]
    sent = _platform_instances(platform)
    assert_previewed_not_sent(report, result.output, identifying, before, sent, tmp_path)


def test_jobs_list_and_show(hospital: tuple[str, str], base: str, tmp_path: Path) -> None:
    _source_tree(tmp_path / "source", "MRN-IMP-5")
    args = ["import", "folder", str(tmp_path / "source"), "--to", f"{base}/dicomweb"]
    assert _import(tmp_path, args, hospital).exit_code == 0
    listed = _import(tmp_path, ["jobs", "list"], hospital)
    assert "folder\tdone" in listed.output and "stored=17" in listed.output
    shown = _import(tmp_path, ["jobs", "show", "1"], hospital)
    assert "quarantined" in shown.output and "BurnedInAnnotation" in shown.output
    assert _import(tmp_path, ["jobs", "show", "99"], hospital).exit_code != 0


def test_an_import_inside_the_platform_shows_its_progress_as_a_task(
    platform: FastAPI, base: str, researcher: dict, tmp_path: Path
) -> None:
    """`--site`: this platform's own archive, as the site's client, through the gateway."""
    tree = _source_tree(tmp_path / "source", "MRN-IMP-6")
    before = _platform_instances(platform)
    env = platform_env(platform, tmp_path)
    args = ["import", "folder", str(tmp_path / "source"), "--site", "IMPORT-HOSPITAL"]
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _platform_instances(platform) - before == len(tree["stored"])
    found = httpx.get(
        f"{base}/fhir/Task",
        params={"identifier": "https://primage.eu/fhir/NamingSystem/import-job|1"},
        headers=researcher,
    ).json()
    [task] = [e["resource"] for e in found["entry"]]
    assert task["status"] == "completed"
    outputs = {o["type"]["text"]: o["valueInteger"] for o in task["output"]}
    assert outputs[STORED] == len(tree["stored"]) and outputs[QUARANTINED] == 1
    assert str(tmp_path) not in json.dumps(task)  # the selection (a path) stays in the ledger


def test_retry_failed_sends_the_failed_items_again(
    platform: FastAPI, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    tree = _source_tree(tmp_path / "source", "MRN-IMP-7")
    settings = Settings(data_dir=tmp_path / "edge")
    ledger = Ledger(db.make_engine(settings.import_database(), 2))
    source = FolderSource(tmp_path / "source")
    job = ledger.create("folder", source.spec(), f"{base}/dicomweb")

    class Down:  # the platform away for the whole first run
        name = f"{base}/dicomweb"

        def send(self, parts: Any) -> Any:
            return [(key, FAILED, "platform unreachable: ConnectError") for key, _ in parts]

    counts = runner.run(ledger, job, source, Down())
    assert counts[FAILED]["items"] == len(tree["stored"]) + 1
    assert ledger.job(job.id).status == "incomplete"
    result = _import(tmp_path, ["jobs", "retry-failed", str(job.id)], hospital)
    assert result.exit_code == 0, result.output
    counts = ledger.counts(job.id)
    assert counts[STORED]["items"] == len(tree["stored"]) and counts[QUARANTINED]["items"] == 1
    assert ledger.job(job.id).status == "done"


def test_transient_failures_are_retried_with_back_off(
    base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    """A refused connection and a 503 before the platform answers: the batch still lands."""
    study = data.study(ct=2, mr=0, patient_id="MRN-IMP-8", patient_name="Wójcik^Ola")
    calls: list[str] = []

    class Flaky(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            calls.append(request.url.path)
            if request.url.path.endswith("/studies") and len(calls) == 1:
                raise httpx.ConnectError("connection refused", request=request)
            if request.url.path.endswith("/studies") and len(calls) == 2:
                return httpx.Response(503, headers={"Retry-After": "0"})
            return super().handle_request(request)

    from primage.imports import ClientCredentials, Credentials

    token_url = f"{base}/oauth/token"
    auth = ClientCredentials(token_url, Credentials(*hospital))
    with httpx.Client(transport=Flaky(), auth=auth, timeout=60) as http:
        destination = StowDestination(f"{base}/dicomweb", http, backoff=0.01)
        outcomes = destination.send([(str(ds.SOPInstanceUID), data.part10(ds)) for ds in study])
    assert [state for _, state, _ in outcomes] == [STORED, STORED]
    assert calls.count("/dicomweb/studies") == 3


def test_resuming_with_the_source_away_says_so_and_keeps_the_job(
    hospital: tuple[str, str], tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "edge")
    ledger = Ledger(db.make_engine(settings.import_database(), 2))
    spec = {
        "host": "127.0.0.1",
        "port": 1,  # nothing listens there
        "called_ae": "PACS",
        "calling_ae": "PRIMAGE",
        "selection": {"patients": ["P1"]},
        "retrieve": "move",
        "scp_ae": "PRIMAGE",
        "scp_port": 11199,
        "scp_bind": "127.0.0.1",
    }
    job = ledger.create("pacs", spec, "http://127.0.0.1:1/dicomweb")
    result = _import(tmp_path, ["jobs", "resume", str(job.id)], hospital)
    assert result.exit_code == 1
    assert "cannot be reached" in result.output and f"job {job.id} can be resumed" in result.output
    assert ledger.job(job.id).status == "planning"
