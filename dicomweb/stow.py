"""STOW-RS (PS3.18 10.5): a streamed multipart/related body in, one outcome per instance out.

Each part is spooled to a blob writer as it arrives (the body is never held in memory),
then read and checked by pydicom, passed through the `Transform` (where the
pseudonymisation gateway sits), committed to the blob store and indexed. A bad part is
refused on its own with a Failure Reason; the others are stored.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom import Dataset, dcmwrite
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from . import instance as parts
from .blobs import BlobStore, BlobWriter
from .errors import BadRequest, Failure, PayloadTooLarge, UnsupportedMedia
from .negotiation import parse_media_type
from .store import Prepared

log = logging.getLogger("primage.dicomweb")

# A dataset transformation between parsing and storing (e.g. de-identification). It returns
# the dataset to store; raising Failure refuses the instance.
Transform = Callable[[Dataset], Dataset]


@dataclass
class Outcome:
    """What became of one part: stored (prepared) or refused (failure)."""

    prepared: Prepared | None = None
    failure: Failure | None = None
    sop_class_uid: str | None = None
    sop_uid: str | None = None


PART_TYPES = ("application/dicom", "application/dicom+json")


def boundary_of(content_type: str | None) -> tuple[str, str]:
    """(boundary, root part type) of a STOW-RS body's Content-Type."""
    media, params = parse_media_type(content_type or "")
    if media != "multipart/related":
        raise UnsupportedMedia('STOW-RS takes multipart/related; type="application/dicom"')
    part_type = params.get("type", "application/dicom").lower()
    if part_type not in PART_TYPES:
        raise UnsupportedMedia(
            f"Parts of type {part_type[:64]} are not supported; send application/dicom "
            "or application/dicom+json with bulk data"
        )
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest("The multipart/related Content-Type has no boundary")
    return boundary, part_type


@dataclass
class Part:
    writer: BlobWriter
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Feeds request-body chunks to a multipart parser, spooling each part to a blob writer."""

    def __init__(self, blobs: BlobStore, boundary: str, limit: int | None = None) -> None:
        self.blobs = blobs
        self.limit = limit
        self.received = 0
        self.finished: list[Part] = []
        self._current: Part | None = None
        self._field = b""
        self._value = b""
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
            },
        )
        self.ended = False
        self._parser.callbacks["on_end"] = self._on_end

    def _on_end(self) -> None:
        self.ended = True

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.limit is not None and self.received > self.limit:
            self.discard()
            raise PayloadTooLarge(f"The body is larger than {self.limit} bytes")
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            self.discard()
            raise BadRequest(f"Malformed multipart body ({exc})") from exc

    def close(self) -> None:
        if self._current is not None or not self.ended:
            self.discard()
            raise BadRequest("The multipart body ended before its closing boundary")

    def discard(self) -> None:
        for part in [*self.finished, *([self._current] if self._current else [])]:
            part.writer.discard()
        self.finished.clear()
        self._current = None

    def _begin(self) -> None:
        self._current = Part(self.blobs.writer())

    def _data(self, data: bytes, start: int, end: int) -> None:
        assert self._current is not None
        self._current.writer.write(memoryview(data)[start:end])

    def _end(self) -> None:
        assert self._current is not None
        self._current.writer.close()
        self.finished.append(self._current)
        self._current = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        assert self._current is not None
        name = self._field.decode("latin-1").strip().lower()
        self._current.headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def take(self) -> list[Part]:
        done, self.finished = self.finished, []
        return done


def prepare(
    blobs: BlobStore,
    part: Part,
    study_uid: str | None,
    transform: Transform | None,
    extra_tags: dict[str, str],
    guard: Callable[[Dataset], None] | None = None,
) -> Outcome:
    """Check one spooled part and commit its blob; never raises for a bad instance."""
    outcome = Outcome()
    writer = part.writer
    try:
        media, _ = parse_media_type(part.headers.get("content-type", "application/dicom"))
        if media != "application/dicom":
            raise Failure.cannot_understand(f"part of type {media[:64]}, not application/dicom")
        try:
            dataset, conformant = parts.read(writer.path)
            checked = parts.check(dataset)
        except Failure:
            raise
        except Exception as exc:  # pydicom choking on a malformed file
            raise Failure.cannot_understand(f"unreadable ({type(exc).__name__})") from exc
        outcome.sop_class_uid, outcome.sop_uid = checked.sop_class_uid, checked.sop_uid
        if study_uid is not None and checked.study_uid != study_uid:
            raise Failure(Failure.STUDY_UID_MISMATCH, "instance of another study than the URL's")
        if transform is not None:
            dataset = transform(dataset)
        if guard is not None:
            guard(dataset)
        layout = parts.pixel_layout(dataset, checked.transfer_syntax)
        if transform is not None or not conformant:
            writer = _rewrite(blobs, writer, dataset)
            checked = parts.check(dataset)
            outcome.sop_class_uid, outcome.sop_uid = checked.sop_class_uid, checked.sop_uid
            layout = parts.layout_of_written(
                dataset, writer.size, checked.transfer_syntax, writer.path
            )
        document = parts.metadata(checked)
        key = blobs.commit(writer)
        outcome.prepared = Prepared(
            study_uid=checked.study_uid,
            series_uid=checked.series_uid,
            sop_uid=checked.sop_uid,
            sop_class_uid=checked.sop_class_uid,
            transfer_syntax=checked.transfer_syntax,
            blob=key,
            size=writer.size,
            metadata=orjson.dumps(document),
            values=_with(parts.index_values(document), layout),
            tags=parts.tag_values(document, extra_tags.values()),
        )
    except Failure as failure:
        writer.discard()
        outcome.failure = failure
    except Exception as exc:  # a dataset pydicom chokes on is refused, not a 500
        writer.discard()
        log.warning("STOW part refused: %s", type(exc).__name__)
        outcome.failure = Failure(
            Failure.PROCESSING_FAILURE, f"cannot process ({type(exc).__name__})"
        )
    return outcome


def _with(values: dict[str, dict[str, Any]], layout: dict[str, int | None]) -> dict:
    values["instance"].update(layout)
    return values


def _rewrite(blobs: BlobStore, old: BlobWriter, dataset: Dataset) -> BlobWriter:
    old.discard()
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    writer = blobs.writer()
    writer.write(buffer.getbuffer())
    writer.close()
    return writer
