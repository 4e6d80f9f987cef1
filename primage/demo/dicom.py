"""A synthetic demo imaging study: a CT and an MR series of a phantom, for `make run`.

No real image or person: the pixels are ellipses drawn here, the patient is the first demo
Patient's research pseudonym, and every UID is generated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from dicomweb.service import Archive

PSEUDONYM = "PRI-7K3Q-9XW2"
BOUNDARY = "primage-demo"


def _phantom(size: int, z: int, tumour: bool) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    c = size / 2
    body = ((x - c) / (0.42 * size)) ** 2 + ((y - c) / (0.32 * size)) ** 2 <= 1
    image = np.where(body, 1040, 24).astype(np.uint16)
    if tumour:
        r = 0.12 * size * (1 - abs(z - 8) / 10)
        mass = (x - 0.62 * size) ** 2 + (y - 0.55 * size) ** 2 <= r**2
        image[mass] = 1090
    return image


def _slice(study: str, series: str, modality: str, n: int, size: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = PSEUDONYM
    ds.PatientID = PSEUDONYM
    ds.PatientSex = "F"
    ds.PatientIdentityRemoved = "YES"  # synthetic: nothing to remove, as the guard requires
    ds.DeidentificationMethod = "synthetic demo data"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime = "20240311", "093000"
    ds.AccessionNumber = "DEMO-0001"
    ds.StudyDescription = "Synthetic staging phantom"
    ds.Modality = modality
    ds.SeriesNumber = 1 if modality == "CT" else 2
    ds.SeriesDescription = f"{modality} abdomen (synthetic)"
    ds.BodyPartExamined = "ABDOMEN"
    ds.InstanceNumber = n
    ds.ImagePositionPatient = [0, 0, 5.0 * n]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.5, 1.5]
    ds.SliceThickness = 5
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if modality == "CT":
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = _phantom(size, n, tumour=True).tobytes()
    return ds


def study(slices: int = 16, size: int = 128) -> list[Dataset]:
    uid = generate_uid()
    ct, mr = generate_uid(), generate_uid()
    return [_slice(uid, ct, "CT", n, size) for n in range(1, slices + 1)] + [
        _slice(uid, mr, "MR", n, size) for n in range(1, slices // 2 + 1)
    ]


def load(archive: Archive, base: str) -> int:
    """Stores the demo study through the archive's STOW path; returns the instance count."""
    import io

    parts = []
    for ds in study():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        parts.append(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + buffer.getvalue()
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    result = asyncio.run(archive.store(chunks(), content_type, None, base))
    if result.status != 200:
        raise RuntimeError("The demo study failed to store")
    return len(result.outcomes)
