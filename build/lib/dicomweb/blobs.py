"""Blob stores for DICOM Part 10 files: content-addressed, written completely before use.

A blob's key is the SHA-256 of its bytes. The writer hashes while it spools to a local
temporary file; `commit` then makes the blob visible in one atomic step (a rename on a
filesystem, one PUT on S3), so a crash leaves either no blob or a whole one, never a
partial file under a real key; `sync` makes a batch of them durable. Index rows name blobs
only after both returned.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

CHUNK = 1024 * 1024


class BlobWriter:
    """A temporary local file that hashes what is written to it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"{uuid.uuid4().hex}.part"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def close(self) -> str:
        """Closes the file; returns the key (hex SHA-256 of the content)."""
        if not self.file.closed:
            self.file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class BlobStore(Protocol):
    def writer(self) -> BlobWriter: ...

    def commit(self, writer: BlobWriter) -> str:
        """Make the written bytes visible under their key (atomically); returns the key."""
        ...

    def sync(self, keys: Iterable[str]) -> None:
        """Make committed blobs durable: called before the index rows naming them commit."""
        ...

    def open(self, key: str) -> BinaryIO: ...

    def read_range(self, key: str, offset: int, length: int) -> bytes: ...

    def local_path(self, key: str) -> Path | None:
        """A path that can be read directly (sendfile, pydicom), when the store has one."""
        ...

    def keys(self) -> Iterator[str]:
        """Every stored blob's key (for garbage collection)."""
        ...

    def delete(self, key: str, grace: float = 0) -> None:
        """Remove a blob, unless it was (re)written less than `grace` seconds ago: a STOW
        may have just committed the same bytes for a row it has not inserted yet."""
        ...


class FileBlobStore:
    """Blobs under `root/ab/<sha256>` (256 folders: ext4 indexes large folders, and fewer
    folders means fewer mkdir calls); temporary files under `root/tmp` (same filesystem)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._folders: set[Path] = set()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def writer(self) -> BlobWriter:
        return BlobWriter(self.tmp)

    def commit(self, writer: BlobWriter) -> str:
        key = writer.close()
        target = self._path(key)
        # If these bytes are stored already, replacing them with themselves is harmless
        # (readers keep the inode they opened) and cheaper than asking first.
        if target.parent not in self._folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(target.parent)
        os.replace(writer.path, target)
        return key

    def sync(self, keys: Iterable[str]) -> None:
        """fsync a batch of blobs, then their folders (so the renames last too). One batch
        costs about one journal commit: the first fsync flushes the others' data with it."""
        if not self.fsync:
            return
        folders = set()
        for key in keys:
            path = self._path(key)
            _fsync(path)
            folders.add(path.parent)
        for folder in folders:
            _fsync(folder)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with self._path(key).open("rb") as source:
            source.seek(offset)
            return source.read(length)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def keys(self) -> Iterator[str]:
        for folder in self.root.iterdir():
            if len(folder.name) == 2 and folder.is_dir():
                yield from (p.name for p in folder.iterdir() if len(p.name) == 64)

    def delete(self, key: str, grace: float = 0) -> None:
        path = self._path(key)
        try:
            if grace and time.time() - path.stat().st_mtime < grace:
                return
            path.unlink()
        except FileNotFoundError:
            pass


class S3BlobStore:
    """Blobs as objects `<prefix><sha256>` in an S3-compatible bucket (AWS, MinIO, Ceph...)."""

    def __init__(self, client: Any, bucket: str, spool: Path, prefix: str = "dicom/") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.spool = spool
        spool.mkdir(parents=True, exist_ok=True)

    def writer(self) -> BlobWriter:
        return BlobWriter(self.spool)

    def commit(self, writer: BlobWriter) -> str:
        key = writer.close()
        try:
            # upload_file switches to a multipart upload for large files; S3 shows the object
            # only once the upload completes, which is the atomicity we need.
            self.client.upload_file(str(writer.path), self.bucket, self.prefix + key)
        finally:
            writer.path.unlink(missing_ok=True)
        return key

    def open(self, key: str) -> BinaryIO:
        """The object as a seekable file (pydicom seeks): in memory up to 16 MB, else spooled
        to disk."""
        out = tempfile.SpooledTemporaryFile(max_size=16 * CHUNK, dir=self.spool)  # noqa: SIM115
        self.client.download_fileobj(self.bucket, self.prefix + key, out)
        out.seek(0)
        return out  # type: ignore[return-value]

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        span = f"bytes={offset}-{offset + length - 1}"
        answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, Range=span)
        return answer["Body"].read()

    def local_path(self, key: str) -> Path | None:
        return None

    def sync(self, keys: Iterable[str]) -> None:
        """Nothing to do: S3 acknowledges a PUT once the object is stored durably."""

    def keys(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]

    def delete(self, key: str, grace: float = 0) -> None:
        name = self.prefix + key
        if grace:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=name)
            except self.client.exceptions.ClientError:
                return
            if time.time() - head["LastModified"].timestamp() < grace:
                return
        self.client.delete_object(Bucket=self.bucket, Key=name)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def chunks(store: BlobStore, key: str, size: int = CHUNK) -> Iterator[bytes]:
    with store.open(key) as source:
        while data := source.read(size):
            yield data
