"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered and thumbnails.

Lookups happen in a short read transaction; bytes stream afterwards, straight from the
blob store. Metadata comes from the index (computed at STOW time), never from the files.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.encaps import get_frame
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from .blobs import BlobStore, chunks
from .errors import BadRequest, NotAcceptable, NotFound
from .instance import BASE, frames

FILE_CHUNK = 1024 * 1024


def boundary() -> str:
    return secrets.token_hex(16)


def multipart(
    parts: Iterable[tuple[str, Iterable[bytes]]], mark: str, batch: int = 4 * FILE_CHUNK
) -> Iterator[bytes]:
    """A multipart/related body (RFC 2387) from (content type, byte chunks) pairs.

    Small pieces are joined into blocks of about `batch` bytes: each block an iterator
    yields costs the server a hop to a worker thread and a send."""
    pending: list[bytes] = []
    size = 0
    for content_type, body in parts:
        pending.append(f"--{mark}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        for chunk in body:
            pending.append(chunk)
            size += len(chunk)
            if size >= batch:
                yield b"".join(pending)
                pending, size = [], 0
        pending.append(b"\r\n")
    pending.append(f"--{mark}--\r\n".encode())
    yield b"".join(pending)


def instance_parts(
    blobs: BlobStore, rows: list[Any], syntax: str | None
) -> Iterator[tuple[str, Iterable[bytes]]]:
    """Each instance as stored, or transcoded to `syntax` when it is stored otherwise."""
    for row in rows:
        if syntax is None or row.transfer_syntax == syntax:
            yield (
                f"application/dicom; transfer-syntax={row.transfer_syntax}",
                chunks(blobs, row.blob, FILE_CHUNK),
            )
        else:
            yield f"application/dicom; transfer-syntax={syntax}", [transcode(blobs, row.blob)]


def transcode(blobs: BlobStore, key: str) -> bytes:
    """Explicit VR Little Endian bytes of a stored instance (decompressing its pixel data;
    a big-endian instance has its elements re-encoded and its pixel words swapped)."""
    with blobs.open(key) as source:
        dataset = dcmread(source)
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    if syntax.is_compressed:
        dataset.decompress()
    elif not syntax.is_little_endian:
        pixels = pixel_array(dataset, raw=True) if "PixelData" in dataset else None
        for _ in dataset.iterall():  # decode every element from big endian first
            pass
        if pixels is not None:
            dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.preamble = dataset.preamble or b"\0" * 128
    out = io.BytesIO()
    dcmwrite(out, dataset, implicit_vr=False, little_endian=True, force_encoding=True)
    return out.getvalue()


def metadata_body(documents: Iterable[bytes], base: str) -> bytes:
    """A DICOM JSON array from stored metadata, with BulkDataURIs made absolute."""
    return (b"[" + b",".join(documents) + b"]").replace(BASE.encode(), base.encode())


def load(blobs: BlobStore, key: str) -> Dataset:
    with blobs.open(key) as source:
        return dcmread(source)


def frame_numbers(text: str, count: int) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise BadRequest("Frame numbers must be a comma-separated list of integers") from None
    if not numbers:
        raise BadRequest("No frame numbers")
    for n in numbers:
        if n < 1 or n > count:
            raise NotFound(f"Frame {n} does not exist (the instance has {count})")
    return numbers


def native_frames(blobs: BlobStore, row: Any, numbers: list[int]) -> list[bytes]:
    """Frames of a native little-endian instance by ranged reads at the offset found at STOW."""
    return [
        blobs.read_range(row.blob, row.pixel_offset + (n - 1) * row.frame_length, row.frame_length)
        for n in numbers
    ]


def frame_bytes(dataset: Dataset, number: int, decode: bool) -> bytes:
    """Frame `number` (1-based): as stored, or decoded to native little-endian pixels."""
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    count = frames(dataset)
    if "PixelData" not in dataset:
        raise NotFound("The instance has no pixel data")
    if syntax.is_encapsulated and not decode:
        return get_frame(dataset.PixelData, number - 1, number_of_frames=count)
    if syntax.is_encapsulated:
        return np.ascontiguousarray(pixel_array(dataset, index=number - 1, raw=True)).tobytes()
    size = (
        int(dataset.Rows)
        * int(dataset.Columns)
        * int(dataset.get("SamplesPerPixel", 1))
        * int(dataset.BitsAllocated)
        // 8
    )
    data = dataset.PixelData[(number - 1) * size : number * size]
    if syntax == ExplicitVRBigEndian and int(dataset.BitsAllocated) > 8:
        dtype = np.dtype(f">u{int(dataset.BitsAllocated) // 8}")
        data = np.frombuffer(data, dtype).astype(dtype.newbyteorder("<")).tobytes()
    return data


def bulk_value(dataset: Dataset, tag: str) -> bytes:
    try:
        element = dataset[int(tag, 16)]
    except (KeyError, ValueError):
        raise NotFound("No such bulk data element") from None
    value = element.value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise NotFound("The element is not bulk data")


# --- rendered (PS3.18 8.3.5 / 10.4.1.1.3) -----------------------------------------------------


def render(
    dataset: Dataset,
    number: int,
    media: str,
    *,
    window: str | None = None,
    viewport: str | None = None,
    quality: str | None = None,
) -> bytes:
    """One frame as a consumer image: modality LUT, VOI (window or the dataset's), 8 bits."""
    if "PixelData" not in dataset:
        raise NotAcceptable("The instance has no pixel data to render")
    try:
        array = pixel_array(dataset, index=number - 1)
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        reason = f"Cannot decode this instance's pixel data ({exc.__class__.__name__})"
        raise NotAcceptable(reason) from exc
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if array.ndim == 2 or photometric.startswith("MONOCHROME"):
        image = Image.fromarray(_grey(dataset, array, window, photometric))
    else:
        image = Image.fromarray(_eight_bit(array.astype(np.float64)))
    if viewport:
        image = _viewport(image, viewport)
    out = io.BytesIO()
    if media == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=_quality(quality))
    return out.getvalue()


def _grey(dataset: Dataset, array: Any, window: str | None, photometric: str) -> Any:
    values = apply_modality_lut(array, dataset).astype(np.float64)
    if window:
        try:
            center, width, *function = window.split(",")
            c, w = float(center), max(float(width), 1.0)
        except ValueError:
            raise BadRequest("window must be center,width[,function]") from None
        if function and function[0].strip().lower() == "sigmoid":
            scaled = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
        else:
            scaled = np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0
        out = scaled
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        out = _eight_bit(apply_voi_lut(values, dataset)).astype(np.float64)
    else:
        out = _eight_bit(values).astype(np.float64)
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    return out.astype(np.uint8)


def _eight_bit(values: Any) -> Any:
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return ((values - low) * (255.0 / (high - low))).clip(0, 255).astype(np.uint8)


def _viewport(image: Image.Image, viewport: str) -> Image.Image:
    """viewport=vw,vh[,sx,sy,sw,sh]: crop to the source region, scale to fit vw x vh."""
    try:
        numbers = [float(n) if n else None for n in viewport.split(",")]
    except ValueError:
        raise BadRequest("viewport must be vw,vh[,sx,sy,sw,sh]") from None
    if len(numbers) not in (2, 6) or not numbers[0] or not numbers[1]:
        raise BadRequest("viewport must be vw,vh[,sx,sy,sw,sh]")
    if len(numbers) == 6:  # the source region, clamped to the image
        sx = min(max(int(numbers[2] or 0), 0), image.width - 1)
        sy = min(max(int(numbers[3] or 0), 0), image.height - 1)
        sw = int(numbers[4] or image.width - sx)
        sh = int(numbers[5] or image.height - sy)
        right, bottom = min(image.width, sx + max(sw, 1)), min(image.height, sy + max(sh, 1))
        image = image.crop((sx, sy, right, bottom))
    width, height = int(numbers[0]), int(numbers[1])
    if width <= 0 or height <= 0 or width > 8192 or height > 8192:
        raise BadRequest("viewport size must be between 1 and 8192")
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _quality(value: str | None) -> int:
    if value is None:
        return 90
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise BadRequest("quality must be an integer from 1 to 100")
    return int(value)
