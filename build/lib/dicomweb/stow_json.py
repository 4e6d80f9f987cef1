"""STOW-RS with metadata and bulk data (PS3.18 10.5.1.2.2): DICOM JSON parts plus bulk parts.

The metadata part holds an array of instances in the DICOM JSON model whose BulkDataURIs
name other parts by their Content-Location. Each instance is assembled into a Part 10
file, then takes the same path as an application/dicom part. Bulk data parts of type
application/octet-stream are native pixels (Explicit VR Little Endian); an image media type
with a transfer-syntax parameter is one compressed frame, encapsulated as such.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian

from .blobs import BlobStore
from .errors import BadRequest, Failure
from .negotiation import parse_media_type
from .stow import Outcome, Part

DICOM_JSON = "application/dicom+json"
JSON_BODY_LIMIT = 2 * 1024**3  # metadata + bulk data are assembled in memory


def assemble(blobs: BlobStore, received: list[Part]) -> tuple[list[Part], list[Outcome]]:
    """Part 10 parts built from the metadata and bulk data parts (which are discarded), and
    the refusals for instances that could not be built."""
    documents: list[Any] = []
    bulk: dict[str, tuple[str, dict[str, str], bytes]] = {}
    try:
        for part in received:
            media, params = parse_media_type(part.headers.get("content-type", DICOM_JSON))
            content = part.writer.path.read_bytes()
            if media in (DICOM_JSON, "application/json"):
                try:
                    loaded = orjson.loads(content)
                except orjson.JSONDecodeError as exc:
                    raise BadRequest("A metadata part is not valid JSON") from exc
                documents += loaded if isinstance(loaded, list) else [loaded]
            else:
                location = part.headers.get("content-location")
                if not location:
                    raise BadRequest("A bulk data part has no Content-Location")
                bulk[location] = (media, params, content)
    finally:
        for part in received:
            part.writer.discard()
    built: list[Part] = []
    refused: list[Outcome] = []
    for document in documents:
        try:
            dataset, syntax = _dataset(document, bulk)
            buffer = io.BytesIO()
            dataset.file_meta = FileMetaDataset()
            dataset.file_meta.TransferSyntaxUID = syntax
            dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            dcmwrite(buffer, dataset, enforce_file_format=True)
        except Failure as failure:
            refused.append(Outcome(failure=failure))
            continue
        except Exception as exc:  # a document pydicom cannot build is refused, not a 500
            reason = f"metadata cannot be turned into a dataset ({type(exc).__name__})"
            refused.append(Outcome(failure=Failure.cannot_understand(reason)))
            continue
        writer = blobs.writer()
        writer.write(buffer.getbuffer())
        writer.close()
        built.append(Part(writer, {"content-type": "application/dicom"}))
    return built, refused


def _dataset(
    document: dict[str, Any], bulk: dict[str, tuple[str, dict[str, str], bytes]]
) -> tuple[Dataset, str]:
    syntax = ExplicitVRLittleEndian
    missing: list[str] = []

    def resolve(tag: str, vr: str, uri: str) -> bytes:
        nonlocal syntax
        found = bulk.get(uri)
        if found is None:
            missing.append(uri)
            return b""
        media, params, content = found
        if tag.upper() == "7FE00010" and media != "application/octet-stream":
            syntax = params.get("transfer-syntax") or ""
            if not syntax or not UID(syntax).is_compressed:
                raise Failure.cannot_understand(
                    f"compressed pixel data of type {media[:40]} needs a transfer-syntax parameter"
                )
            return encapsulate([content])
        return content

    if not isinstance(document, dict):
        raise Failure.cannot_understand("an instance in the metadata is not a JSON object")
    dataset = Dataset.from_json(document, bulk_data_uri_handler=resolve)
    if missing:
        raise Failure.cannot_understand("a BulkDataURI names no part of the request")
    return dataset, syntax
