"""One stored SOP instance: read a Part 10 file, check it, and derive its index row and metadata.

Everything QIDO and WADO metadata need is computed here, once, at STOW time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .errors import Failure

BULK_THRESHOLD = 1024
BASE = "{base}"  # replaced by the request's DICOMweb base URL when metadata is served
UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Instance:
    """A parsed, checked instance: its UIDs, index attributes and DICOM JSON metadata."""

    dataset: Dataset
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str

    @property
    def path(self) -> str:
        return f"studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


def read(path: Path) -> tuple[Dataset, bool]:
    """Reads a Part 10 file, refusing what is not DICOM or ends early (pydicom reads leniently).

    Also accepts a dataset with file meta information but no preamble and 'DICM' prefix
    (what `pydicom.dcmwrite` writes by default); the bool says whether the file was a
    conformant Part 10 file, so the caller can store a normalised copy instead."""
    conformant = True
    try:
        try:
            dataset = dcmread(path)
        except InvalidDicomError:
            conformant = False
            dataset = dcmread(path, force=True)
            if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}):
                raise
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise Failure.cannot_understand(f"not a DICOM Part 10 file ({type(exc).__name__})") from exc
    size = os.path.getsize(path)
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != UNDEFINED
            and raw.value_tell + raw.length > size
        ):
            raise Failure.cannot_understand(f"truncated: element {tag} ends after the file")
    return dataset, conformant


def check(dataset: Dataset) -> Instance:
    """The UIDs a stored instance must have (PS3.18 10.5: else 0xA900 / 0xC000)."""
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise Failure.cannot_understand("no Transfer Syntax UID in the file meta information")
    if not UID(str(syntax)).is_transfer_syntax:
        raise Failure(Failure.SYNTAX_NOT_SUPPORTED, "transfer syntax not supported")
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        try:
            value = dataset.get(keyword)
        except Exception as exc:
            raise Failure.cannot_understand(f"{keyword} cannot be read") from exc
        if not value or not UID(str(value)).is_valid:
            raise Failure.mismatch(f"{keyword} is missing or not a valid UID")
        uids[keyword] = str(value)
    _check_pixel_length(dataset, UID(str(syntax)))
    return Instance(
        dataset,
        uids["StudyInstanceUID"],
        uids["SeriesInstanceUID"],
        uids["SOPInstanceUID"],
        uids["SOPClassUID"],
        str(syntax),
    )


def _check_pixel_length(dataset: Dataset, syntax: UID) -> None:
    if "PixelData" not in dataset or syntax.is_compressed:
        return
    try:
        expected = (
            int(dataset.Rows)
            * int(dataset.Columns)
            * int(dataset.get("SamplesPerPixel", 1))
            * int(dataset.BitsAllocated)
            * frames(dataset)
            + 7
        ) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise Failure.mismatch("pixel data without valid Rows/Columns/BitsAllocated") from exc
    actual = len(dataset.PixelData)
    if actual < expected:
        raise Failure.cannot_understand(f"pixel data is {actual} bytes, expected {expected}")


def pixel_layout(dataset: Dataset, syntax: str, offset: int | None = None) -> dict[str, int | None]:
    """Offset of the pixel data value in the file and the bytes per frame, for native
    little-endian images whose frames are whole bytes; None otherwise. `offset`: where the
    value is known to start, else where the dataset was read from."""
    none: dict[str, int | None] = {"pixel_offset": None, "frame_length": None}
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or "PixelData" not in dataset:
        return none
    if offset is None:
        element = dataset.get_item(0x7FE00010)
        offset = getattr(element, "value_tell", None) or getattr(element, "file_tell", None)
    bits = int(dataset.get("BitsAllocated") or 0)
    if offset is None or bits % 8:
        return none
    rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    return {"pixel_offset": offset, "frame_length": rows * columns * samples * bits // 8}


def layout_of_file(path: Path, syntax: str) -> dict[str, int | None]:
    """pixel_layout of a file written by us (after a transform), without loading its pixels."""
    return pixel_layout(dcmread(path, defer_size=1024), syntax)


def layout_of_written(
    dataset: Dataset, size: int, syntax: str, path: Path
) -> dict[str, int | None]:
    """pixel_layout of the `size`-byte file `dataset` was just written to. When pixel data
    is its last element, the (even-padded) value ends the file, so no second read is
    needed: that read was a fifth of a de-identified STOW's time. Else layout_of_file."""
    if "PixelData" in dataset and max(dataset.keys()) == 0x7FE00010:
        value = dataset.PixelData
        if isinstance(value, bytes | bytearray):
            return pixel_layout(dataset, syntax, size - len(value) - len(value) % 2)
    return layout_of_file(path, syntax)


def frames(dataset: Dataset) -> int:
    try:
        return max(1, int(dataset.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def metadata(instance: Instance) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2). Large binary values at the top level (pixel data above all)
    become BulkDataURIs; inside sequences they stay inline, because a bulk data URI names a
    top-level tag only."""
    prefix = f"{BASE}/{instance.path}/bulkdata/"

    def bulk(element: DataElement) -> str:
        return f"{prefix}{element.tag:08X}"

    document: dict[str, Any] = {}
    for element in instance.dataset:
        if element.tag.is_private and element.VR == "UN":
            continue  # unknown private data: no VR to describe it with
        handler = None if element.VR == "SQ" else bulk
        document[f"{element.tag:08X}"] = element.to_json_dict(handler, BULK_THRESHOLD)
    # Which syntax a client gets with transfer-syntax=* (PS3.18 F.2: Available Transfer Syntax)
    document["00083002"] = {"vr": "UI", "Value": [instance.transfer_syntax]}
    return dict(sorted(document.items()))


def tag_values(document: dict[str, Any], tags: Iterable[str]) -> dict[str, str]:
    """Extended query tag values from DICOM JSON, as QIDO matches them."""
    out = {}
    for tag in tags:
        text = json_text(document, tag)
        if text:
            out[tag] = text[:255]
    return out


def json_text(document: dict[str, Any], tag: str) -> str | None:
    """An element of DICOM JSON as DICOM would write it: multiple values joined by
    backslashes, person names as Alphabetic=Ideographic=Phonetic (trailing groups dropped)."""
    values = document.get(tag, {}).get("Value")
    if not values:
        return None
    texts = []
    for value in values:
        if isinstance(value, dict):
            groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            texts.append("=".join(groups).rstrip("="))
        else:
            texts.append(str(value))
    return "\\".join(texts) or None


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


STUDY_COLUMNS = {
    "patient_id": ("PatientID", 64),
    "patient_name": ("PatientName", 324),
    "patient_birth_date": ("PatientBirthDate", 8),
    "patient_sex": ("PatientSex", 16),
    "study_date": ("StudyDate", 8),
    "study_time": ("StudyTime", 16),
    "accession_number": ("AccessionNumber", 64),
    "study_id": ("StudyID", 16),
    "referring_physician_name": ("ReferringPhysicianName", 324),
    "study_description": ("StudyDescription", 64),
}
SERIES_COLUMNS = {
    "modality": ("Modality", 16),
    "series_description": ("SeriesDescription", 64),
    "body_part": ("BodyPartExamined", 16),
    "pps_start_date": ("PerformedProcedureStepStartDate", 8),
    "pps_start_time": ("PerformedProcedureStepStartTime", 16),
}
NUMBERS = {
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "rows": "Rows",
    "columns": "Columns",
    "bits_allocated": "BitsAllocated",
    "number_of_frames": "NumberOfFrames",
}
_TAGS = {
    keyword: _tag(keyword) for keyword, _ in [*STUDY_COLUMNS.values(), *SERIES_COLUMNS.values()]
} | {keyword: _tag(keyword) for keyword in NUMBERS.values()}


def index_values(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Column values for the study, series and instance rows (None where absent), read from
    the instance's DICOM JSON so that the index and the metadata cannot disagree."""

    def text(keyword: str, limit: int) -> str | None:
        value = json_text(document, _TAGS[keyword])
        return value[:limit] if value else None

    def number(keyword: str) -> int | None:
        values = document.get(_TAGS[keyword], {}).get("Value")
        try:
            return int(values[0]) if values else None
        except (TypeError, ValueError):
            return None

    study = {column: text(kw, limit) for column, (kw, limit) in STUDY_COLUMNS.items()}
    study["patient_name_key"] = name_key(study["patient_name"])
    study["referring_physician_key"] = name_key(study["referring_physician_name"])
    series: dict[str, Any] = {c: text(kw, limit) for c, (kw, limit) in SERIES_COLUMNS.items()}
    series["series_number"] = number("SeriesNumber")
    instance = {column: number(kw) for column, kw in NUMBERS.items() if column != "series_number"}
    return {"study": study, "series": series, "instance": instance}


def name_key(name: str | None) -> str | None:
    """Person names upper-cased with component separators as spaces: 'DOE^JANE' -> 'DOE JANE'."""
    if name is None:
        return None
    return " ".join(name.upper().replace("^", " ").replace("=", " ").split())
