"""Blob stores for DICOM Part 10 files: content-addressed, written completely before use.

A blob's key is the SHA-256 of its bytes. The writer hashes while it spools to a local
temporary file; `commit` then makes the blob visible in one atomic step (a rename on a
filesystem, one PUT on S3), so a crash leaves either no blob or a whole one, never a
partial file under a real key. Index rows name blobs only after `commit` returned.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
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
        """Make the written bytes durable and visible under their key; returns the key."""
        ...

    def open(self, key: str) -> BinaryIO: ...

    def read_range(self, key: str, offset: int, length: int) -> bytes: ...

    def local_path(self, key: str) -> Path | None:
        """A path that can be read directly (sendfile, pydicom), when the store has one."""
        ...

    def delete(self, key: str) -> None: ...


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
        if self.fsync and not writer.file.closed:
            writer.file.flush()
            os.fsync(writer.file.fileno())
        key = writer.close()
        target = self._path(key)
        # If these bytes are stored already, replacing them with themselves is harmless
        # (readers keep the inode they opened) and cheaper than asking first.
        if target.parent not in self._folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(target.parent)
        os.replace(writer.path, target)
        return key

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with self._path(key).open("rb") as source:
            source.seek(offset)
            return source.read(length)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


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
        body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]
        return _Reader(body)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        span = f"bytes={offset}-{offset + length - 1}"
        answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, Range=span)
        return answer["Body"].read()

    def local_path(self, key: str) -> Path | None:
        return None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


class _Reader:
    """A botocore streaming body as a closable binary file for `read`-based consumers."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        return self._body.read(None if size < 0 else size)

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunks(store: BlobStore, key: str, size: int = CHUNK) -> Iterator[bytes]:
    with store.open(key) as source:
        while data := source.read(size):
            yield data
