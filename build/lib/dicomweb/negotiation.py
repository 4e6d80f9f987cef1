"""Accept and Content-Type headers as PS3.18 8.7 uses them: media type, type, transfer-syntax."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from .errors import NotAcceptable

NATIVE = {
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
}
# PS3.18 Table 8.7.3-2/-3: the bulk data media type of each compressed transfer syntax.
FRAME_MEDIA = {
    JPEGBaseline8Bit: "image/jpeg",
    JPEGExtended12Bit: "image/jpeg",
    JPEGLossless: "image/jpeg",
    JPEGLosslessSV1: "image/jpeg",
    JPEGLSLossless: "image/jls",
    JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
    JPEG2000: "image/jp2",
    RLELossless: "image/dicom-rle",
}


@dataclass(frozen=True, slots=True)
class MediaRange:
    media: str  # for multipart/related: the `type` parameter (the parts' media type)
    multipart: bool
    transfer_syntax: str | None
    q: float


def _split(value: str, sep: str) -> list[str]:
    """Splits on `sep` outside double quotes."""
    out, current, quoted = [], [], False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return [item.strip() for item in out if item.strip()]


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    media, *params = _split(value, ";")
    out: dict[str, str] = {}
    for param in params:
        key, _, val = param.partition("=")
        out[key.strip().lower()] = val.strip().strip('"')
    return media.strip().lower(), out


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges by preference (q, then order); no header means anything."""
    if not header:  # no Accept: anything, so each resource's default media type
        return [MediaRange("*/*", False, None, 1.0)]
    ranges = []
    for index, item in enumerate(_split(header, ",")):
        media, params = parse_media_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if media == "multipart/related":
            part = params.get("type", "*/*").lower()
            ranges.append((q, -index, MediaRange(part, True, params.get("transfer-syntax"), q)))
        else:
            ranges.append((q, -index, MediaRange(media, False, params.get("transfer-syntax"), q)))
    return [r for q, _, r in sorted(ranges, key=lambda t: (t[0], t[1]), reverse=True) if q > 0]


def covers(pattern: str, media: str) -> bool:
    if pattern in ("*/*", "*", media):
        return True
    return pattern.endswith("/*") and media.split("/")[0] == pattern[:-2]


def instance_syntax(accept: list[MediaRange], stored: set[str]) -> str | None:
    """Transfer syntax for a multipart/related; type=application/dicom retrieve.

    None means each instance as stored (`transfer-syntax=*`). Without the parameter PS3.18
    8.7.3.5.2 prescribes Explicit VR Little Endian; other syntaxes are served only when the
    instances are already stored in them (primage does not compress)."""
    for item in accept:
        if not (item.multipart or item.media == "*/*") or not covers(
            item.media, "application/dicom"
        ):
            continue
        syntax = item.transfer_syntax
        if syntax == "*":
            return None
        if syntax is None or syntax == ExplicitVRLittleEndian:
            if all(decodable(uid) for uid in stored):
                return ExplicitVRLittleEndian
            continue
        if stored == {syntax}:
            return None
    raise NotAcceptable(
        'Acceptable: multipart/related; type="application/dicom" with transfer-syntax '
        "1.2.840.10008.1.2.1, * or the stored syntax"
    )


def decodable(syntax: str) -> bool:
    """Whether an instance stored in `syntax` can be transcoded to Explicit VR Little Endian."""
    uid = UID(syntax)
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def frame_media(accept: list[MediaRange], stored: str) -> tuple[str, bool]:
    """(media type, decode?) for frames of an instance stored in `stored` syntax."""
    native = UID(stored) in NATIVE
    own = "application/octet-stream" if native else FRAME_MEDIA.get(UID(stored))
    for item in accept:
        if not (item.multipart or item.media == "*/*"):
            continue
        syntax = item.transfer_syntax
        if own and covers(item.media, own) and syntax in (None, "*", stored) and not native:
            return own, False
        if (
            covers(item.media, "application/octet-stream")
            and syntax in (None, "*", ExplicitVRLittleEndian)
            and (native or decodable(stored))
        ):
            return "application/octet-stream", not native
    raise NotAcceptable(
        'Acceptable: multipart/related; type="application/octet-stream" or the stored '
        "syntax's image media type"
    )


def rendered_media(accept: list[MediaRange]) -> str:
    for item in accept:
        if item.multipart:
            continue
        for media in ("image/jpeg", "image/png"):
            if covers(item.media, media):
                return media
    raise NotAcceptable("Acceptable: image/jpeg, image/png")
