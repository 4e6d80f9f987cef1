"""`primage import pacs` (issue 8) against a real PACS: dcmtk's dcmqrscp, loaded with storescu.

The PACS runs on 127.0.0.1 (dcmqrscp binds every interface, and has no option to bind one,
so it accepts associations only from the three AE titles of its host table, at
127.0.0.1), with four patients of two studies each, one with a burned-in screenshot series,
and a fifth with a single instance.
The platform is tests/test_import.py's: OAuth2, the gateway and the identified-data guard
on, served over HTTP; the importer is the CLI with a site's client credentials.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from curation.ledger import FAILED, PENDING, QUARANTINED, STORED, Item
from curation.pacs import PacsError, PacsSource, Selection
from tests import dicom_data as data
from tests import test_import
from tests.test_gateway import _stored_text

# the platform and its clients: tests/test_import.py's fixtures (a platform of this module's own)
platform = test_import.platform
base = test_import.base
hospital = test_import.hospital
researcher = test_import.researcher
_import = test_import._import
_platform_instances = test_import._platform_instances
edge_ledger = test_import.edge_ledger
linked_pseudonym = test_import.linked_pseudonym
run_until_killed = test_import.run_until_killed

PACS_AE, IMPORTER_AE, SCP_AE, LOADER_AE = "TESTPACS", "PRIMAGE", "PRIMAGESCP", "LOADER"
# dcmtk waits for delayed ACKs (40 ms a message) unless told to set TCP_NODELAY
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
PATIENTS = {  # Patient ID: (name, CT and MR instances per study)
    "MRN-PACS-1": ("Kowalczyk^Zofia", 18, 13),
    "MRN-PACS-2": ("Nowak^Jan", 19, 13),
    "MRN-PACS-3": ("Wang^XiaoDong", 20, 13),
    "MRN-PACS-4": ("Dupont^Léa", 21, 13),
}


@dataclass
class Pacs:
    port: int
    scp_port: int
    folder: Path
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid: patient, sops...
    burned: str = ""
    plain: Dataset = field(default_factory=Dataset)  # MRN-PACS-5's one instance

    def sops(self, *patients: str) -> set[str]:
        return {s for st in self.studies.values() if st["patient"] in patients for s in st["sops"]}

    def args(self, *selection: str, retrieve: str = "move", port: int | None = None) -> list[str]:
        return [
            "import",
            "pacs",
            "--host",
            "127.0.0.1",
            "--port",
            str(port or self.port),
            "--called-ae",
            PACS_AE,
            "--calling-ae",
            IMPORTER_AE,
            "--scp-ae",
            SCP_AE,
            "--scp-port",
            str(self.scp_port),
            "--scp-bind",
            "127.0.0.1",
            "--retrieve",
            retrieve,
            *selection,
        ]

    def source(self, selection: Selection) -> PacsSource:
        return PacsSource(
            "127.0.0.1",
            self.port,
            PACS_AE,
            IMPORTER_AE,
            selection,
            scp_ae=SCP_AE,
            scp_port=self.scp_port,
            scp_bind="127.0.0.1",
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(pacs: Pacs, store: Path) -> str:
    hosts = "\n".join(
        f"{ae.lower()} = ({ae}, 127.0.0.1, {pacs.scp_port})"
        for ae in (IMPORTER_AE, SCP_AE, LOADER_AE)
    )
    return f"""\
NetworkTCPPort  = {pacs.port}
MaxPDUSize      = 131072
MaxAssociations = 16

HostTable BEGIN
{hosts}
local = {IMPORTER_AE.lower()}, {SCP_AE.lower()}, {LOADER_AE.lower()}
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{PACS_AE} {store} RW (100, 1024mb) local
AETable END
"""


def _load(pacs: Pacs) -> None:
    """Four patients, two studies each (the second of the last one MR only), and a burned-in
    screenshot series in the first study of the third; into the PACS with storescu."""
    files = pacs.folder / "load"
    files.mkdir()
    for n, (patient, (name, ct, mr)) in enumerate(PATIENTS.items(), 1):
        for letter, year in (("A", 2023), ("B", 2024)):
            counts = (0, 30) if (n, letter) == (4, "B") else (ct, mr)
            study = data.study(
                ct=counts[0],
                mr=counts[1],
                patient_id=patient,
                patient_name=name,
                study_date=f"{year}0{n + 2}01",
                accession=f"ACC-{n}{letter}",
            )
            uid = str(study[0].StudyInstanceUID)
            if (n, letter) == (3, "A"):
                burned = data.image(uid, generate_uid(), 1, patient_id=patient, series_number=3)
                burned.PatientName, burned.StudyDate = name, study[0].StudyDate
                burned.AccessionNumber, burned.BurnedInAnnotation = "ACC-3A", "YES"
                study.append(burned)
                pacs.burned = str(burned.SOPInstanceUID)
            pacs.studies[uid] = {
                "patient": patient,
                "name": name,
                "accession": f"ACC-{n}{letter}",
                "sops": {str(ds.SOPInstanceUID) for ds in study},
            }
            for ds in study:
                (files / f"{ds.SOPInstanceUID}.dcm").write_bytes(data.part10(ds))
    # a fifth patient: one instance, in explicit VR little endian
    plain = data.image(generate_uid(), generate_uid(), 1, patient_id="MRN-PACS-5")
    plain.StudyDate = "20220101"
    pacs.plain = plain
    (files / f"{plain.SOPInstanceUID}.dcm").write_bytes(data.part10(plain))
    loader = ["storescu", "-q", "-aet", LOADER_AE, "-aec", PACS_AE, "+sd", "127.0.0.1"]
    subprocess.run([*loader, str(pacs.port), str(files)], check=True, timeout=120, env=NODELAY)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    if shutil.which("dcmqrscp") is None:
        pytest.fail("dcmtk's dcmqrscp is missing: `make test` installs Debian's dcmtk")
    folder = tmp_path_factory.mktemp("pacs")
    store = folder / "store"
    store.mkdir()
    pacs = Pacs(_free_port(), _free_port(), folder)
    (folder / "dcmqrscp.cfg").write_text(_config(pacs, store))
    with (folder / "dcmqrscp.log").open("wb") as log:
        # -dhl: peers are checked by address (127.0.0.1), not a reverse lookup
        server = subprocess.Popen(
            ["dcmqrscp", "-c", str(folder / "dcmqrscp.cfg"), "-dhl", str(pacs.port)],
            cwd=folder,
            env=NODELAY,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                pacs.source(Selection()).echo()
                break
            except PacsError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((folder / "dcmqrscp.log").read_text()[-2000:])
                time.sleep(0.1)
        _load(pacs)
        yield pacs
    finally:
        server.terminate()
        server.wait(timeout=10)


def _studies(base: str, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{base}/dicomweb/studies", headers=headers, params={"limit": 1000})
    return {s["0020000D"]["Value"][0]: s for s in (answer.json() if answer.content else [])}


def _report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_import_by_patient_list_stores_those_patients_pseudonymised(
    pacs: Pacs,
    platform: FastAPI,
    base: str,
    hospital: tuple[str, str],
    researcher: dict[str, str],
    tmp_path: Path,
) -> None:
    (tmp_path / "patients.csv").write_text("Note,PatientID\nsecond,MRN-PACS-2\n,\n")
    chosen = ("MRN-PACS-1", "MRN-PACS-2")
    expected = pacs.sops(*chosen)
    before, studies_before = _platform_instances(platform), _studies(base, researcher)
    report = tmp_path / "report.json"
    args = pacs.args("--patient", "MRN-PACS-1", "--patients-csv", str(tmp_path / "patients.csv"))
    to = ["--to", f"{base}/dicomweb", "--report", str(report), "--batch", "8"]
    result = _import(tmp_path, [*args, *to], hospital)
    assert result.exit_code == 0, result.output
    summary = _report(report)
    assert summary["status"] == "done"
    assert summary["counts"][STORED]["items"] == len(expected) == 2 * 31 + 2 * 32
    assert summary["counts"][QUARANTINED]["items"] == summary["counts"][FAILED]["items"] == 0
    assert _platform_instances(platform) - before == len(expected)
    # pseudonymised: new UIDs, PRM- pseudonyms, one per patient, both studies under it
    new = {uid: s for uid, s in _studies(base, researcher).items() if uid not in studies_before}
    assert len(new) == 4 and not set(new) & set(pacs.studies)
    by_pseudonym: dict[str, set[int]] = {}
    for uid, study in new.items():
        pseudonym = study["00100020"]["Value"][0]
        assert pseudonym.startswith("PRM-")
        by_pseudonym.setdefault(pseudonym, set()).add(study["00201208"]["Value"][0])
        assert linked_pseudonym(base, researcher, uid) == pseudonym
    # 31 instances in each study of MRN-PACS-1, 32 in those of MRN-PACS-2
    assert sorted(map(sorted, by_pseudonym.values())) == [[31], [32]]
    stored = _stored_text(platform)
    mine = [uid for uid, study in pacs.studies.items() if study["patient"] in chosen]
    originals = [*chosen, *expected, *mine, "Kowalczyk", "Nowak"]
    originals += [pacs.studies[uid]["accession"] for uid in mine]
    assert [value for value in originals if value.encode() in stored] == []


@pytest.mark.parametrize("retrieve", ["move", "get"])
def test_instances_arrive_in_part_10_as_the_pacs_sent_them(pacs: Pacs, retrieve: str) -> None:
    source = pacs.source(Selection(patients=("MRN-PACS-5",)))
    source.retrieve = retrieve
    [listed] = source.listing()
    sop = str(pacs.plain.SOPInstanceUID)
    assert listed.key == sop and listed.locator.endswith(f"/{sop}")
    pending = Item(listed.key, listed.group, listed.locator, 0, PENDING, None)
    [(item, received)] = source.fetch([pending])
    assert item == pending and isinstance(received, bytes), received
    ds = dcmread(io.BytesIO(received))
    assert received[128:132] == b"DICM" and ds.file_meta.MediaStorageSOPInstanceUID == sop
    assert ds.file_meta.TransferSyntaxUID == pacs.plain.file_meta.TransferSyntaxUID
    assert ds == pacs.plain  # every element, pixel data included


def test_a_killed_import_resumes_and_stores_exactly_the_source(
    pacs: Pacs, platform: FastAPI, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    expected = pacs.sops("MRN-PACS-3")
    before = _platform_instances(platform)
    ledger = edge_ledger(tmp_path)
    source = pacs.source(Selection(accessions=("ACC-3A", "ACC-3B")))
    job = ledger.create(source.kind, source.spec(), f"{base}/dicomweb")
    run_until_killed(base, hospital, ledger, job, source, batch=8)
    counts = ledger.counts(job.id)
    assert counts[STORED]["items"] + counts[QUARANTINED]["items"] == 8
    assert counts[PENDING]["items"] == len(expected) - 8
    report = tmp_path / "resumed.json"
    args = ["jobs", "resume", str(job.id), "--batch", "8", "--report", str(report)]
    result = _import(tmp_path, args, hospital)
    assert result.exit_code == 0, result.output
    counts = ledger.counts(job.id)
    assert counts[STORED]["items"] == len(expected) - 1 == 2 * 33
    assert counts[QUARANTINED]["items"] == 1
    assert counts[PENDING]["items"] == counts[FAILED]["items"] == 0
    assert ledger.job(job.id).status == "done"
    assert _platform_instances(platform) - before == len(expected) - 1
    [problem] = _report(report)["problems"]
    assert problem["key"] == pacs.burned and "BurnedInAnnotation" in problem["reason"]


def test_c_get_by_study_dates(
    pacs: Pacs, platform: FastAPI, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    before = _platform_instances(platform)
    report = tmp_path / "get.json"
    dates = ["--date-from", "2024-06-01", "--date-to", "20240630"]
    args = [*pacs.args(*dates, retrieve="get"), "--to", f"{base}/dicomweb", "--report", str(report)]
    result = _import(tmp_path, args, hospital)
    assert result.exit_code == 0, result.output
    summary = _report(report)
    assert summary["status"] == "done"
    assert summary["counts"][STORED]["items"] == 30  # MRN-PACS-4's MR study of June 2024
    assert _platform_instances(platform) - before == 30


def test_dry_run_counts_and_quarantine_without_sending(
    pacs: Pacs, platform: FastAPI, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    before = _platform_instances(platform)
    report = tmp_path / "dry.json"
    to = ["--to", f"{base}/dicomweb", "--dry-run", "--report", str(report)]
    result = _import(tmp_path, [*pacs.args("--patient", "MRN-PACS-3"), *to], hospital)
    assert result.exit_code == 0, result.output
    assert "would import 67 instances" in result.output
    assert "1 patients, 2 studies, 5 series" in result.output
    deid = _report(report)["deidentification"]
    assert list(deid["quarantined"].values()) == [1]
    assert {"PatientName", "PatientID", "StudyInstanceUID"} <= {*deid["replaced"], *deid["removed"]}
    assert "Wang" not in result.output and "MRN-PACS-3" not in result.output
    # a modality selects the studies that have it: MRN-PACS-4's first study only, with C-GET
    args = pacs.args("--patient", "MRN-PACS-4", "--modality", "CT", retrieve="get")
    result = _import(tmp_path, [*args, "--to", f"{base}/dicomweb", "--dry-run"], hospital)
    assert result.exit_code == 0, result.output
    assert "would import 34 instances" in result.output
    assert "1 patients, 1 studies, 2 series" in result.output
    assert _platform_instances(platform) == before
    assert not (tmp_path / "edge" / "imports.db").exists()


def test_an_unreachable_or_refusing_pacs_is_a_clear_error(
    pacs: Pacs, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    to = ["--to", f"{base}/dicomweb"]
    nobody = _import(tmp_path, [*pacs.args("--patient", "X", port=_free_port()), *to], hospital)
    assert nobody.exit_code == 1 and isinstance(nobody.exception, SystemExit)
    assert "cannot be reached" in nobody.output and "Traceback" not in nobody.output
    wrong = [*pacs.args("--patient", "X"), *to]
    wrong[wrong.index("--calling-ae") + 1] = "STRANGER"
    refused = _import(tmp_path, wrong, hospital)
    assert refused.exit_code == 1 and "refused the association" in refused.output
    unselected = _import(tmp_path, [*pacs.args(), *to], hospital)
    assert unselected.exit_code == 2 and "Select studies" in unselected.output
    assert not (tmp_path / "edge" / "imports.db").exists()


def test_an_instance_the_pacs_cannot_deliver_fails_with_its_reason(
    pacs: Pacs, base: str, hospital: tuple[str, str], tmp_path: Path
) -> None:
    """The PACS lists an instance whose file is gone (the last test: it changes the PACS)."""
    [study] = [uid for uid, s in pacs.studies.items() if s["accession"] == "ACC-4A"]
    lost = sorted(pacs.studies[study]["sops"])[0]
    for path in (pacs.folder / "store").iterdir():
        if path.suffix == ".dcm" and lost.encode() in path.read_bytes():
            path.unlink()
    report = tmp_path / "lost.json"
    args = [
        *pacs.args("--accession", "ACC-4A"),
        "--to",
        f"{base}/dicomweb",
        "--report",
        str(report),
    ]
    result = _import(tmp_path, args, hospital)
    assert result.exit_code == 0, result.output
    summary = _report(report)
    assert summary["status"] == "incomplete"
    assert summary["counts"][FAILED]["items"] == 1
    [problem] = summary["problems"]
    assert problem["key"] == lost
    assert problem["reason"].startswith("not delivered by the PACS: C-MOVE status 0x")
