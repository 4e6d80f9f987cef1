"""Synthetic CT slices for the benchmarks (bench/dicomweb.py, bench/import_pacs.py)."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def slice_dataset(study: str, series: str, n: int, patient: int, size: int, base: np.ndarray):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.PatientName = f"Bench^Patient{patient:03d}"
    ds.PatientID = f"BENCH-{patient:03d}"
    ds.PatientBirthDate = "20150101"
    ds.PatientSex = "F" if patient % 2 else "M"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate = f"2024{1 + patient % 12:02d}15"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{patient:05d}"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Bench CT"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "axial"
    ds.InstanceNumber = n
    ds.ImagePositionPatient = [0, 0, n * 2.5]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.roll(base, n, axis=0).tobytes()
    return ds
