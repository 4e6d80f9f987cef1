"""`primage import folder`: DICOM files in folders (recursive), zip files, DICOMDIR.

An item is one instance, keyed by its SOP Instance UID and grouped by study; its locator is
the file's path, or `zip-path!member` inside a zip. A DICOMDIR given as the path lists the
files it references; met inside a folder, it is skipped (the walk finds its files anyway).
Files that are not DICOM are counted and left alone.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from .ledger import Item, Listed

HEADER_TAGS = [
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
]


@dataclass
class FolderSource:
    path: Path
    kind: str = "folder"
    not_dicom: list[str] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve())}

    def files(self) -> Iterator[tuple[str, Any]]:
        """(locator, opener) for every candidate file."""
        root = self.path
        if root.is_file() and root.name.upper() == "DICOMDIR":
            for instance in FileSet(dcmread(root)):
                path = Path(instance.path)
                yield str(path), path.open
            return
        paths = [root] if root.is_file() else sorted(_walk(root))
        for path in paths:
            if path.name.upper() == "DICOMDIR":
                continue
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    for member in sorted(archive.namelist()):
                        if not member.endswith("/") and Path(member).name.upper() != "DICOMDIR":
                            yield f"{path}!{member}", _member_opener(path, member)
            else:
                yield str(path), path.open

    def listing(self) -> Iterator[Listed]:
        for locator, opener in self.files():
            header = _header(opener)
            if header is None or "SOPInstanceUID" not in header:
                self.not_dicom.append(locator)
                continue
            yield Listed(
                key=str(header.SOPInstanceUID),
                group=str(header.get("StudyInstanceUID", "")),
                locator=locator,
                size=_size(locator),
            )

    def preview(self) -> Iterator[tuple[Any, int]]:
        """(header Dataset, size) of every DICOM file, for a dry run."""
        for locator, opener in self.files():
            header = _header(opener, full=True)
            if header is not None and "SOPInstanceUID" in header:
                yield header, _size(locator)

    def fetch(self, items: Sequence[Item]) -> Iterator[tuple[Item, bytes | str]]:
        for item in items:
            try:
                yield item, read(item.locator)
            except OSError as exc:
                yield item, f"unreadable: {type(exc).__name__}"


def read(locator: str) -> bytes:
    path, _, member = locator.partition("!")
    if member:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    return Path(path).read_bytes()


def _walk(root: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        for name in names:
            yield Path(directory) / name


def _member_opener(path: Path, member: str) -> Any:
    def opener(mode: str = "rb") -> io.BytesIO:
        with zipfile.ZipFile(path) as archive:
            return io.BytesIO(archive.read(member))

    return opener


def _header(opener: Any, full: bool = False) -> Any:
    try:
        with opener("rb") as handle:
            if full:  # from memory: the preview deep-copies it, buffer included
                return dcmread(io.BytesIO(handle.read()), stop_before_pixels=True)
            return dcmread(handle, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError):
        return None


def _size(locator: str) -> int:
    path, _, member = locator.partition("!")
    if member:
        with zipfile.ZipFile(path) as archive:
            return archive.getinfo(member).file_size
    return Path(path).stat().st_size
