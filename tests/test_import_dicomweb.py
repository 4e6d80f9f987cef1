"""`primage import dicomweb` (issue 8): studies pulled from another DICOMweb archive.

The source is another primage instance served over HTTP: a plain archive (no auth, no
gateway) holding identified studies, with a QIDO maximum of a few results so that every
selection has to be paged; the same archive is also served with OAuth2 on, for the
source-credentials variant. The destination is the platform of tests/test_import.py
(OAuth2, gateway and identified-data guard on), fed as a hospital site.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from pydicom import dcmread
from pydicom.uid import RLELossless

from curation.dicomweb_source import READ_SCOPE, DicomwebSource, HttpxAuth, Selection
from curation.ledger import FAILED, PENDING, PRESENT, QUARANTINED, STORED, Item, Ledger
from primage import db
from primage.app import create_app
from primage.settings import Settings
from tests import dicom_data as data
from tests.conftest import fresh_database, serving
from tests.test_gateway import _stored_text
from tests.test_import import (  # the platform fixtures, reused
    _import,
    _platform_instances,
    assert_previewed_not_sent,
    base,
    edge_ledger,
    hospital,
    linked_pseudonym,
    platform,
    researcher,
    run_until_killed,
)

__all__ = ["base", "hospital", "platform", "researcher"]  # fixtures used by name
SOURCE_PAGE = 4  # the source's QIDO maximum: every selection below is larger


@pytest.fixture(scope="module")
def source_apps(
    settings: Settings, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FastAPI, FastAPI]]:
    """One archive, served plain and with OAuth2 on (the same database and blobs)."""
    folder = tmp_path_factory.mktemp("dicomweb-source")
    for url in fresh_database(database_url, folder):
        db.upgrade(url)
        plain = settings.model_copy(
            update={
                "database_url": SecretStr(url),
                "data_dir": folder,
                "auth_enabled": False,
                "gateway_enabled": False,
                "identified_data_guard": False,
                "qido_max_results": SOURCE_PAGE,
            }
        )
        apps = (create_app(plain), create_app(plain.model_copy(update={"auth_enabled": True})))
        yield apps
        for app in apps:
            app.state.database.engine.dispose()


@pytest.fixture(scope="module")
def source(source_apps: tuple[FastAPI, FastAPI]) -> Iterator[str]:
    for root in serving(source_apps[0]):
        yield f"{root}/dicomweb"


@pytest.fixture(scope="module")
def guarded_source(source_apps: tuple[FastAPI, FastAPI]) -> Iterator[str]:
    for root in serving(source_apps[1]):
        yield f"{root}/dicomweb"


def _load(
    source: str, patient: str, name: str, studies: list[dict[str, Any]], burned: bool = False
) -> dict[str, set[str]]:
    """Identified studies STOWed to the source; a burned-in CT in the first study if asked."""
    datasets = []
    for spec in studies:
        datasets += data.study(patient_id=patient, patient_name=name, **spec)
    quarantined = set()
    if burned:
        first = datasets[0]
        image = data.image(
            first.StudyInstanceUID,
            first.SeriesInstanceUID,
            99,
            patient_id=patient,
            patient_name=name,
        )
        image.BurnedInAnnotation = "YES"
        quarantined.add(str(image.SOPInstanceUID))
    else:
        image = None
    sent = [*datasets, image] if image is not None else datasets
    response = httpx.post(
        f"{source}/studies",
        content=data.multipart([data.part10(ds) for ds in sent]),
        headers={"Content-Type": data.stow_type(), "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    return {
        "stored": {str(ds.SOPInstanceUID) for ds in datasets},
        "quarantined": quarantined,
        "studies": {str(ds.StudyInstanceUID) for ds in datasets},
    }


def _served_studies(base: str, headers: dict[str, str]) -> dict[str, str]:
    """The platform's studies: UID -> Patient ID (the research pseudonym)."""
    found = httpx.get(f"{base}/dicomweb/studies", headers=headers)
    if found.status_code == 204:
        return {}
    return {s["0020000D"]["Value"][0]: s["00100020"]["Value"][0] for s in found.json()}


def test_import_by_patient_stores_exactly_those_patients_pseudonymised(
    platform: FastAPI,
    base: str,
    hospital: tuple[str, str],
    researcher: dict[str, str],
    source: str,
    tmp_path: Path,
) -> None:
    a = _load(source, "MRN-DW-A", "Kowalczyk^Zofia", [{"ct": 5, "mr": 1}, {"ct": 2, "mr": 0}], True)
    b = _load(source, "MRN-DW-B", "Nowak^Jan", [{"ct": 2, "mr": 1}])
    other = _load(source, "MRN-DW-C", "Wiśniewska^Ewa", [{"ct": 2, "mr": 1}])
    wanted = a["stored"] | b["stored"]
    before, studies_before = _platform_instances(platform), _served_studies(base, researcher)
    report = tmp_path / "report.json"
    args = ["import", "dicomweb", source, "--patient", "MRN-DW-A", "--patient", "MRN-DW-B"]
    args += ["--to", f"{base}/dicomweb", "--report", str(report), "--batch", "4"]
    result = _import(tmp_path, args, hospital)
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["status"] == "done"
    assert summary["counts"][STORED]["items"] == len(wanted)
    assert summary["counts"][STORED]["bytes"] == len(wanted) * 32 * 32 * 2
    assert summary["counts"][FAILED]["items"] == 0
    [problem] = summary["problems"]
    assert problem["state"] == QUARANTINED and problem["key"] in a["quarantined"]
    assert "BurnedInAnnotation" in problem["reason"]
    assert _platform_instances(platform) - before == len(wanted)
    # pseudonymised: no name, patient id or original UID at rest on the platform
    stored = _stored_text(platform)
    originals = a["stored"] | a["studies"] | a["quarantined"] | b["stored"] | b["studies"]
    for phi in ["Kowalczyk", "Nowak", "Gildong", "MRN-DW-A", "MRN-DW-B", *originals]:
        assert phi.encode() not in stored, phi
    assert "Wi\u015bniewska".encode() not in stored and not other["studies"] & set(
        _served_studies(base, researcher)
    )
    # three new studies, of two pseudonymised patients, each linked to its Patient
    new = {
        uid: pid
        for uid, pid in _served_studies(base, researcher).items()
        if uid not in studies_before
    }
    assert len(new) == 3
    assert sorted(list(new.values()).count(p) for p in set(new.values())) == [1, 2]
    for uid, pseudonym in new.items():
        assert pseudonym.startswith("PRM-")
        assert linked_pseudonym(base, researcher, uid) == pseudonym


def test_the_same_import_again_stores_nothing_twice(
    platform: FastAPI, base: str, hospital: tuple[str, str], source: str, tmp_path: Path
) -> None:
    d = _load(source, "MRN-DW-D", "Dupont^Léa", [{"ct": 3, "mr": 2}])
    args = ["import", "dicomweb", source, "--patient", "MRN-DW-D", "--to", f"{base}/dicomweb"]
    assert _import(tmp_path, args, hospital).exit_code == 0
    stored = _platform_instances(platform)
    report = tmp_path / "again.json"
    result = _import(tmp_path, [*args, "--report", str(report)], hospital)
    assert result.exit_code == 0, result.output
    counts = json.loads(report.read_text())["counts"]
    assert counts[PRESENT]["items"] == len(d["stored"])
    assert counts[STORED]["items"] == counts[PENDING]["items"] == 0
    assert _platform_instances(platform) == stored


def test_a_killed_import_resumes_to_exactly_the_source(
    platform: FastAPI, base: str, hospital: tuple[str, str], source: str, tmp_path: Path
) -> None:
    e = _load(source, "MRN-DW-E", "Hong^Gildong", [{"ct": 4, "mr": 3}, {"ct": 2, "mr": 0}], True)
    before = _platform_instances(platform)
    ledger = edge_ledger(tmp_path)
    dicomweb = DicomwebSource(source, Selection(patients=("MRN-DW-E",)))
    job = ledger.create("dicomweb", dicomweb.spec(), f"{base}/dicomweb")
    run_until_killed(base, hospital, ledger, job, dicomweb, batch=3)
    total = len(e["stored"]) + 1
    counts = ledger.counts(job.id)
    assert counts[STORED]["items"] + counts[QUARANTINED]["items"] == 3
    assert counts[PENDING]["items"] == total - 3
    result = _import(tmp_path, ["jobs", "resume", str(job.id), "--batch", "3"], hospital)
    assert result.exit_code == 0, result.output
    counts = ledger.counts(job.id)
    assert counts[STORED]["items"] == len(e["stored"])
    assert counts[QUARANTINED]["items"] == 1
    assert counts[PENDING]["items"] == counts[FAILED]["items"] == 0
    assert ledger.job(job.id).status == "done"
    assert {i.key for i in ledger.items(job.id, (STORED,))} == e["stored"]
    assert _platform_instances(platform) - before == len(e["stored"])


def test_selections_larger_than_the_source_page_are_fully_paged(source: str) -> None:
    march = {"study_date": "19990315"}
    studies = [{"ct": 1, "mr": 1, **march} for _ in range(5)]
    studies += [
        {"ct": 4, "mr": 3, "accession": "ACC-DW-F", **march},  # 7 instances: paged too
        {"ct": 2, "mr": 0, **march},  # no MR
        {"ct": 1, "mr": 1, "study_date": "19990401"},  # April
    ]
    f = _load(source, "MRN-DW-F", "Dupont^Léa", studies)
    by_study: dict[str, int] = {}
    listed = list(DicomwebSource(source, Selection(patients=("MRN-DW-F",))).listing())
    for item in listed:
        by_study[item.group] = by_study.get(item.group, 0) + 1
        study, _, sop = item.locator.split("/")
        assert study == item.group and sop == item.key and item.size == 32 * 32 * 2
    assert len(by_study) == 8 > SOURCE_PAGE
    assert {i.key for i in listed} == f["stored"] and len(listed) == len(f["stored"])
    assert max(by_study.values()) == 7 > SOURCE_PAGE
    march_mr = Selection(date_from="19990301", date_to="19990331", modalities=("MR",))
    assert len({i.group for i in DicomwebSource(source, march_mr).listing()}) == 6
    accession = {i.group for i in DicomwebSource(source, Selection(accession="ACC-DW-F")).listing()}
    assert len(accession) == 1
    two = tuple(sorted(f["studies"]))[:2]
    assert {i.group for i in DicomwebSource(source, Selection(studies=two)).listing()} == set(two)


def test_fetch_keeps_the_transfer_syntax_and_names_what_it_cannot_have(source: str) -> None:
    [ct, other] = data.study(ct=2, mr=0, patient_id="MRN-DW-I")
    compressed = data.rle(ct)
    response = httpx.post(
        f"{source}/studies",
        content=data.multipart([data.part10(compressed), data.part10(other)]),
        headers={"Content-Type": data.stow_type(), "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    dicomweb = DicomwebSource(source, Selection(patients=("MRN-DW-I",)))
    listed = {i.key: i for i in dicomweb.listing()}
    study, series = ct.StudyInstanceUID, ct.SeriesInstanceUID
    missing = f"{study}/{series}/1.2.826.0.1.3680043.8.498.1"
    elsewhere = f"{study}/1.2.826.0.1.3680043.8.498.2/1.2.826.0.1.3680043.8.498.3"
    items = [Item(i.key, i.group, i.locator, i.size, PENDING, None) for i in listed.values()]
    items += [
        Item(loc.rsplit("/")[-1], study, loc, 0, PENDING, None) for loc in (missing, elsewhere)
    ]
    fetched = {item.key: answer for item, answer in dicomweb.fetch(items)}
    assert set(fetched) == {i.key for i in items}
    received = dcmread(io.BytesIO(fetched[str(compressed.SOPInstanceUID)]))
    assert received.file_meta.TransferSyntaxUID == RLELossless  # as stored, not transcoded
    assert received.PixelData == compressed.PixelData
    assert dcmread(io.BytesIO(fetched[str(other.SOPInstanceUID)])).PatientID == "MRN-DW-I"
    for locator in (missing, elsewhere):
        assert fetched[locator.rsplit("/")[-1]] == "not found at the source (HTTP 404)"


def test_dry_run_previews_and_sends_nothing(
    platform: FastAPI, base: str, hospital: tuple[str, str], source: str, tmp_path: Path
) -> None:
    g = _load(source, "MRN-DW-G", "Kowalczyk^Zofia", [{"ct": 3, "mr": 2}], True)
    before = _platform_instances(platform)
    report = tmp_path / "dry.json"
    args = ["import", "dicomweb", source, "--patient", "MRN-DW-G", "--to", f"{base}/dicomweb"]
    result = _import(tmp_path, [*args, "--dry-run", "--report", str(report)], hospital)
    assert result.exit_code == 0, result.output
    assert f"would import {len(g['stored']) + 1} instances" in result.output
    assert "1 patients, 1 studies, 2 series" in result.output
    identifying = ["Kowalczyk", "MRN-DW-G"]
    sent = _platform_instances(platform)
    assert_previewed_not_sent(report, result.output, identifying, before, sent, tmp_path)


def test_a_source_with_oauth2_takes_client_credentials(
    platform: FastAPI,
    base: str,
    hospital: tuple[str, str],
    source: str,
    guarded_source: str,
    source_apps: tuple[FastAPI, FastAPI],
    tmp_path: Path,
) -> None:
    h = _load(source, "MRN-DW-H", "Nowak^Jan", [{"ct": 2, "mr": 2}])
    reader, secret = source_apps[1].state.auth.clients.add("dw-reader", "system/ImagingStudy.rs")
    assert secret is not None
    args = ["import", "dicomweb", guarded_source, "--patient", "MRN-DW-H"]
    args += ["--to", f"{base}/dicomweb"]
    refused = _import(tmp_path, args, hospital)
    assert refused.exit_code != 0 and "HTTP 401" in refused.output
    before = _platform_instances(platform)
    report = tmp_path / "report.json"
    credentials = ["--source-client-id", reader.client_id, "--source-client-secret", secret]
    result = _import(tmp_path, [*args, *credentials, "--report", str(report)], hospital)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["counts"][STORED]["items"] == len(h["stored"])
    assert _platform_instances(platform) - before == len(h["stored"])
    ledger = Ledger(db.make_engine(Settings(data_dir=tmp_path / "edge").import_database(), 1))
    [job] = ledger.jobs()  # none for the refused attempt
    assert secret not in json.dumps(job.spec) and secret not in result.output
    # a token refused on the way (expired, revoked) is renewed once, as over httpx
    root = guarded_source.removesuffix("/dicomweb")
    token = httpx.post(
        f"{root}/oauth/token",
        data={"grant_type": "client_credentials", "scope": READ_SCOPE},
        auth=(reader.client_id, secret),
    ).json()["access_token"]

    class Stale(httpx.Auth):
        def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
            request.headers["Authorization"] = "Bearer stale"
            response = yield request
            if response.status_code == 401:
                request.headers["Authorization"] = f"Bearer {token}"
                yield request

    renewing = DicomwebSource(guarded_source, Selection(patients=("MRN-DW-H",)))
    renewing.http.auth = HttpxAuth(Stale())
    assert {i.key for i in renewing.listing()} == h["stored"]
