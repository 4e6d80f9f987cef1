"""Synthetic DICOM studies for the archive tests: small, fast to make, with names from PS3.5."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"


def image(
    study: str,
    series: str,
    number: int,
    *,
    modality: str = "CT",
    patient_id: str = "PAT-001",
    patient_name: str = "Yamada^Tarou",
    study_date: str = "20240105",
    accession: str = "ACC-1",
    series_number: int = 1,
    frames: int = 1,
    size: int = 32,
    body_part: str | None = "CHEST",
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage, "NM": NM_IMAGE_STORAGE}[modality]
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "20150304"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = "Hong^Gildong"
    ds.StudyDescription = "Staging"
    ds.Manufacturer = "Synthetic"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{modality} series {series_number}"
    if body_part:
        ds.BodyPartExamined = body_part
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    pixels = np.arange(size * size * frames, dtype=np.uint16).reshape(frames, size, size)
    pixels = (pixels * (number + 1)) % 4096
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = 100
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def study(
    *, ct: int = 3, mr: int = 2, patient_id: str = "PAT-001", **attrs: object
) -> list[Dataset]:
    """A study with a CT series and an MR series."""
    uid = generate_uid()
    ct_series, mr_series = generate_uid(), generate_uid()
    out = [
        image(uid, ct_series, n, patient_id=patient_id, series_number=1, **attrs)
        for n in range(1, ct + 1)
    ]
    out += [
        image(uid, mr_series, n, modality="MR", patient_id=patient_id, series_number=2, **attrs)
        for n in range(1, mr + 1)
    ]
    return out


def rle(ds: Dataset) -> Dataset:
    """The same image, RLE Lossless compressed (pydicom's own encoder), with a new SOP UID."""
    copy = dcmread(io.BytesIO(part10(ds)))
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy.compress(RLELossless, encoding_plugin="pydicom")
    return copy


STUDY_LEVEL = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
)


def jpeg2000(study_uid: str, series_uid: str, like: Dataset | None = None) -> Dataset:
    """pydicom's JPEG 2000 lossless MR file, moved into the given study and series (with the
    patient and study attributes of `like`, as one study's instances have)."""
    ds = dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    for keyword in STUDY_LEVEL if like is not None else ():
        setattr(ds, keyword, like.get(keyword))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart(bodies: Iterable[bytes], boundary: str = "primage-test-boundary") -> bytes:
    out = b""
    for body in bodies:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def stow_type(boundary: str = "primage-test-boundary") -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'
