"""`primage import clinical` (issue 8): registry exports mapped to FHIR, against the real app.

The platform runs with OAuth2, the gateway and the identified-data guard on, served over
HTTP; the importer is the CLI with a site's client credentials, its ledger in its own data
directory. The exports are the synthetic examples under mappings/examples/.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI

from curation.clinical import ClinicalSource, ExportError
from curation.clinical_mapping import Mapping, MappingError
from curation.ledger import FAILED, PRESENT, STORED, Ledger
from fhir_server.terminology import load
from primage import db, imports
from primage.cli import main
from primage.settings import Settings
from tests.conftest import gateway_platform, platform_env, serving

PSEUDONYM = "https://primage.eu/fhir/NamingSystem/research-pseudonym"
ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "mappings"
NB_CSV = MAPPINGS / "examples" / "neuroblastoma-registry.csv"
NB_MAP = MAPPINGS / "neuroblastoma-registry.yaml"
DIPG_XLSX = MAPPINGS / "examples" / "dipg-registry.xlsx"
DIPG_MAP = MAPPINGS / "dipg-registry.yaml"
SITE = "CLINICAL-HOSPITAL"
SD = "https://primage.eu/fhir/StructureDefinition/"


@pytest.fixture(scope="module")
def platform(
    settings: Settings, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    for app in gateway_platform(settings, database_url, tmp_path_factory, "clinical"):
        # the profiles and terminology `primage serve` loads at start: every import below is
        # checked against the profiles its mapping claims
        load.load(app.state.database.write, load.read_all(load.shipped(MAPPINGS)))
        yield app


@pytest.fixture(scope="module")
def base(platform: FastAPI) -> Iterator[str]:
    yield from serving(platform)


@pytest.fixture(scope="module")
def hospital(platform: FastAPI) -> tuple[str, str]:
    client, secret = platform.state.auth.clients.add("clinical-import", "system/*.cu", SITE)
    return client.client_id, secret


@pytest.fixture(scope="module")
def researcher(platform: FastAPI, base: str) -> dict[str, str]:
    client, secret = platform.state.auth.clients.add("clinical-researcher", "system/*.rs", None)
    token = httpx.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client.client_id, secret),
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def _cli(edge: Path, args: list[str], hospital: tuple[str, str]) -> Any:
    env = {
        "PRIMAGE_DATA_DIR": str(edge),
        "PRIMAGE_IMPORT_CLIENT_ID": hospital[0],
        "PRIMAGE_IMPORT_CLIENT_SECRET": hospital[1],
    }
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def _search(base: str, headers: dict, path: str, **params: str) -> list[dict[str, Any]]:
    bundle = httpx.get(f"{base}/fhir/{path}", params={"_count": "200", **params}, headers=headers)
    assert bundle.status_code == 200, bundle.text
    return [e["resource"] for e in bundle.json().get("entry", [])]


def _patients(base: str, researcher: dict) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in _search(base, researcher, "Patient")}


def _codes(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept.get("coding", [])}


def test_neuroblastoma_export_stores_good_patients_pseudonymised_and_reports_bad_rows(
    base: str, hospital: tuple[str, str], researcher: dict, tmp_path: Path
) -> None:
    before = _patients(base, researcher)
    report = tmp_path / "report.json"
    args = ["import", "clinical", str(NB_CSV), "--mapping", str(NB_MAP), "--to", base]
    result = _cli(tmp_path / "edge", [*args, "--report", str(report)], hospital)
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["kind"] == "clinical" and summary["destination"] == f"{base}/fhir"
    assert summary["counts"][STORED]["items"] == 4
    assert summary["counts"][FAILED]["items"] == 3
    reasons = sorted(p["reason"] for p in summary["problems"])
    assert reasons == [
        "row 6, column dob: the value is not a date in the format %d/%m/%Y",
        "row 7, column inrg_stage: unknown value 'L3': the mapping has no code for it",
        "row 8, column patient_id: required value missing (patient id)",
    ]

    new = {k: v for k, v in _patients(base, researcher).items() if k not in before}
    assert len(new) == 4  # the three bad rows sent nothing
    text = json.dumps(new, ensure_ascii=False)
    for identifying in ("NB-000", "García", "Lucía", "Rossi", "Łukasiewicz", "2019-03-14"):
        assert identifying not in text
    observations_per_patient = []
    for patient_id, patient in new.items():
        [identifier] = patient["identifier"]
        assert identifier["system"] == PSEUDONYM and identifier["value"].startswith("PRM-")
        assert "name" not in patient
        [condition] = _search(base, researcher, "Condition", subject=f"Patient/{patient_id}")
        assert _codes(condition["code"]) & {(ICDO3, "9500/3"), (ICDO3, "9490/3")}
        assert condition["bodySite"][0]["coding"][0]["code"].startswith("C")
        observations = _search(base, researcher, "Observation", subject=f"Patient/{patient_id}")
        observations_per_patient.append(len(observations))
        for observation in observations:
            assert observation["subject"] == {"reference": f"Patient/{patient_id}"}
            if "focus" in observation:  # the stages and MYCN are about the diagnosis
                assert observation["focus"] == [{"reference": f"Condition/{condition['id']}"}]
            if observation["code"]["coding"][0]["code"] == "409720004":  # INSS, checked
                assert observation["meta"]["profile"] == [SD + "PrimageINSSStage"]
                assert "focus" in observation
        vma = [o for o in observations if ("http://loinc.org", "3124-5") in _codes(o["code"])]
        if len(vma) == 2:  # NB-0001: two rows, one Patient, a marker per row
            assert sorted(o["valueQuantity"]["value"] for o in vma) == [12.1, 85.2]
            assert {o["valueQuantity"]["code"] for o in vma} == {"mg/g{creat}"}
            inrg = next(o for o in observations if o["code"]["coding"][0]["code"] == "C133427")
            assert inrg["valueCodeableConcept"]["coding"][0]["code"] == "C133430"  # stage M
    assert sorted(observations_per_patient) == [3, 4, 4, 5]


def test_the_same_export_again_sends_nothing_and_a_changed_row_updates_in_place(
    base: str, hospital: tuple[str, str], researcher: dict, tmp_path: Path
) -> None:
    args = ["import", "clinical", str(NB_CSV), "--mapping", str(NB_MAP), "--to", base]
    assert _cli(tmp_path / "edge", args, hospital).exit_code == 0
    patients = _patients(base, researcher)
    observations = {o["id"]: o for o in _search(base, researcher, "Observation")}
    report = tmp_path / "again.json"
    result = _cli(tmp_path / "edge", [*args, "--report", str(report)], hospital)
    assert result.exit_code == 0, result.output
    counts = json.loads(report.read_text())["counts"]
    assert counts[PRESENT]["items"] == 4 and counts[STORED]["items"] == 0
    assert counts[FAILED]["items"] == 3  # the bad rows are still bad, still not sent
    assert _patients(base, researcher).keys() == patients.keys()
    # the registry corrects one value: that patient alone is sent, and updates in place
    changed = tmp_path / "corrected.csv"
    changed.write_text(NB_CSV.read_text(encoding="utf-8").replace(",40,mg/g", ",41,mg/g"))
    result = _cli(
        tmp_path / "edge",
        [*args[:2], str(changed), *args[3:], "--report", str(report)],
        hospital,
    )
    assert result.exit_code == 0, result.output
    counts = json.loads(report.read_text())["counts"]
    assert counts[STORED]["items"] == 1 and counts[PRESENT]["items"] == 3
    after = {o["id"]: o for o in _search(base, researcher, "Observation")}
    assert after.keys() == observations.keys()  # PUT: no copies
    updated = [o for k, o in after.items() if o["meta"] != observations[k]["meta"]]
    values = {o["valueQuantity"]["value"] for o in updated if "valueQuantity" in o}
    assert values == {41}
    assert _patients(base, researcher).keys() == patients.keys()


def test_dipg_xlsx_inside_the_platform(
    platform: FastAPI, base: str, researcher: dict, tmp_path: Path
) -> None:
    """`--site`: this platform's FHIR service, as the site's client, through the gateway."""
    before = _patients(base, researcher)
    env = platform_env(platform, tmp_path)
    report = tmp_path / "dipg.json"
    args = ["import", "clinical", str(DIPG_XLSX), "--mapping", str(DIPG_MAP), "--site", SITE]
    result = CliRunner().invoke(main, [*args, "--report", str(report)], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["destination"] == f"local:{SITE}/fhir"
    assert summary["counts"][STORED]["items"] == 3
    [problem] = summary["problems"]
    assert problem["reason"] == "row 5, column lansky: '120' is out of range (0..100)"
    new = {k: v for k, v in _patients(base, researcher).items() if k not in before}
    assert len(new) == 3
    text = json.dumps(new, ensure_ascii=False)
    assert not [s for s in ("Moreau", "Élodie", "DIPG-10", "2015-06-02") if s in text]
    lansky, evidence, h3, courses = [], set(), [], []
    for patient_id in new:
        [condition] = _search(base, researcher, "Condition", subject=f"Patient/{patient_id}")
        # dose and fractions: one radiotherapy course, the platform having checked its profile
        [course] = _search(base, researcher, "Procedure", subject=f"Patient/{patient_id}")
        assert course["meta"]["profile"] == [SD + "PrimageRadiotherapyCourse"]
        assert course["code"]["coding"][0]["code"] == "108290001"
        assert course["reasonReference"] == [{"reference": f"Condition/{condition['id']}"}]
        assert course["performedPeriod"]["start"] > condition["onsetDateTime"]  # both shifted
        extensions = {e["url"].rsplit("/", 1)[1]: e for e in course["extension"]}
        dose = extensions["primage-radiotherapy-total-dose"]["valueQuantity"]
        assert dose["code"] == "Gy" and dose["system"] == "http://unitsofmeasure.org"
        fractions = extensions["primage-radiotherapy-fractions"]["valuePositiveInt"]
        courses.append((dose["value"], fractions))
        assert condition["bodySite"][0]["coding"][0]["code"] == "C71.7"
        evidence |= {c["code"] for cc in condition["evidence"][0]["code"] for c in cc["coding"]}
        for o in _search(base, researcher, "Observation", subject=f"Patient/{patient_id}"):
            assert not o["code"]["coding"][0]["system"].endswith("primage-local-observation")
            if "valueInteger" in o and o["code"]["coding"][0]["code"] == "C38144":
                lansky.append(o["valueInteger"])
            if o["code"].get("text") == "Histone H3 K27M mutation":
                h3.append(o["valueCodeableConcept"]["coding"][0]["code"])
    assert sorted(lansky) == [70, 80, 90]
    assert evidence == {"86273004", "363679005"}  # biopsy, imaging
    assert sorted(h3) == ["LA9633-4", "LA9634-2"]  # "not tested" says nothing: no Observation
    assert sorted(courses) == [(39, 13), (54, 30), (54, 30)]


def test_dry_run_lists_patients_and_row_problems_and_sends_nothing(
    base: str, hospital: tuple[str, str], researcher: dict, tmp_path: Path
) -> None:
    before = _patients(base, researcher)
    report = tmp_path / "dry.json"
    args = ["import", "clinical", str(NB_CSV), "--mapping", str(NB_MAP), "--to", base]
    result = _cli(tmp_path / "edge", [*args, "--dry-run", "--report", str(report)], hospital)
    assert result.exit_code == 0, result.output
    assert "would import 4 patients (5 rows of 8): 4 Condition, 16 Observation, 4 Patient" in (
        result.output
    )
    assert "NB-0001 (rows 2, 3): 1 Condition, 5 Observation, 1 Patient" in result.output
    assert "row 7, column inrg_stage: unknown value 'L3'" in result.output
    assert "not in the mapping, not imported: notes" in result.output
    document = json.loads(report.read_text())
    assert [p["patient"] for p in document["not_imported"]] == ["NB-0004", "NB-0005", None]
    assert _patients(base, researcher).keys() == before.keys()
    ledger = Ledger(db.make_engine(Settings(data_dir=tmp_path / "edge").import_database(), 1))
    assert ledger.jobs() == []


def test_a_resumed_job_reads_the_same_patients(tmp_path: Path) -> None:
    source = ClinicalSource(NB_CSV, NB_MAP)
    again = imports.source_of(source.kind, json.loads(json.dumps(source.spec())))
    assert [g.key for g in again.listing()] == [g.key for g in source.listing()]


def test_an_export_or_mapping_that_does_not_fit_stops_before_a_job(tmp_path: Path) -> None:
    shutil.copy(NB_MAP, tmp_path / "m.yaml")
    shutil.copytree(MAPPINGS / "conceptmaps", tmp_path / "conceptmaps")
    lines = NB_CSV.read_text(encoding="utf-8").splitlines()
    (tmp_path / "short.csv").write_text(lines[0].replace(",mycn,", ",mycn_status,") + "\n")
    with pytest.raises(ExportError, match="does not have: mycn"):
        _ = ClinicalSource(tmp_path / "short.csv", tmp_path / "m.yaml").groups
    text = NB_MAP.read_text(encoding="utf-8")
    (tmp_path / "m.yaml").write_text(text.replace("element: onsetDateTime", "element: onset"))
    with pytest.raises(MappingError, match="Condition has no element onset"):
        Mapping.load(tmp_path / "m.yaml")
    (tmp_path / "m.yaml").write_text(text.replace("code: C133430", "codes: C133430"))
    with pytest.raises(MappingError, match="inrg_stage"):
        Mapping.load(tmp_path / "m.yaml")


def test_a_row_a_profile_refuses_fails_its_patient_with_the_platform_reason(
    base: str, hospital: tuple[str, str], researcher: dict, tmp_path: Path
) -> None:
    """Lansky 55 passes the mapping (0..100) but not PrimageLanskyScore (steps of 10): the
    platform refuses that patient's transaction with 422, the other patient is stored."""
    from openpyxl import load_workbook

    book = load_workbook(DIPG_XLSX)
    sheet = book["registry"]
    header = [c.value for c in sheet[1]]
    sheet.delete_rows(4, sheet.max_row)  # keep DIPG-101 and DIPG-102, as new patients
    for row, local_id in ((2, "DIPG-901"), (3, "DIPG-902")):
        sheet.cell(row, header.index("patient_id") + 1, local_id)
    sheet.cell(2, header.index("lansky") + 1, 55)
    export = tmp_path / "lansky.xlsx"
    book.save(export)
    before = _patients(base, researcher)
    report = tmp_path / "report.json"
    args = ["import", "clinical", str(export), "--mapping", str(DIPG_MAP), "--to", base]
    result = _cli(tmp_path / "edge", [*args, "--report", str(report)], hospital)
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["counts"][STORED]["items"] == 1 and summary["counts"][FAILED]["items"] == 1
    [problem] = summary["problems"]
    reason = problem["reason"]
    assert reason.startswith("HTTP 422: Bundle.entry["), reason
    assert "PrimageLanskyScore" in reason and "prm-lansky-1" in reason
    new = [p for k, p in _patients(base, researcher).items() if k not in before]
    assert len(new) == 1  # the refused patient's transaction left nothing
    claimed = new[0]["meta"]["profile"]
    assert claimed == ["https://primage.eu/fhir/StructureDefinition/PrimagePatient"]
