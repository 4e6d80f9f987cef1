"""Gateway side of linkage: keyed encodings of the quasi-identifiers, and the local id sealed.

The gateway holds the key; the linkage service only ever sees an `Encoding`, which is what
crosses the wire (`to_json`). Names become field-level Bloom filters of bigrams (keyed HMAC
double hashing, one derived key per field), plus each token's sorted letters (so a
transposition typo keeps one gram whole), so a typo or a dropped name costs some bits,
not the whole field. The date of birth becomes one keyed tag per digit: year digits keyed
by position, month and day digits keyed by their position *within* the two-digit pair, so
the service can count equal digits (a one-digit typo keeps 7 of 8) and spot a day/month
swap without ever seeing a date. Blocking keys are keyed hashes of several coarse
combinations, so one wrong field never loses the candidate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pseudonymisation import normalise
from pseudonymisation.identity import Identity

NAME_BITS, NAME_HASHES = 1024, 8  # about 12 % of bits set for two names
PLACE_BITS, PLACE_HASHES = 256, 8
TAG_BYTES = 4
BLOCK_BYTES = 8
SEAL_CONTEXT = b"primage-local-id-v1"
_SOUNDEX = str.maketrans("bfpvcgjkqsxzdtlmnr", "111122222222334556")


@dataclass(frozen=True, slots=True)
class Encoding:
    """What the linkage service sees of one identity. Filters are Python ints (bit sets)."""

    given: int
    family: int
    dob: tuple[int | None, ...]  # 8 digit tags YYYYMMDD, None where unknown
    sex: int | None
    place: int | None
    blocks: tuple[str, ...]

    def to_json(self) -> dict:
        return {
            "v": 1,
            "given": _b64(self.given, NAME_BITS),
            "family": _b64(self.family, NAME_BITS),
            "dob": list(self.dob),
            "sex": self.sex,
            "place": None if self.place is None else _b64(self.place, PLACE_BITS),
            "blocks": list(self.blocks),
        }

    @classmethod
    def from_json(cls, data: dict) -> Encoding:
        """Raises ValueError (or KeyError/TypeError) for what is not a version-1 encoding."""
        if data.get("v") != 1:
            raise ValueError("unsupported encoding version")
        dob = tuple(None if t is None else int(t) for t in data["dob"])
        if len(dob) != 8:
            raise ValueError("dob must have 8 digit tags")
        place = data.get("place")
        return cls(
            given=_unb64(data["given"]),
            family=_unb64(data["family"]),
            dob=dob,
            sex=None if data.get("sex") is None else int(data["sex"]),
            place=None if place is None else _unb64(place),
            blocks=tuple(str(b) for b in data["blocks"]),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Encoding:
        return cls.from_json(json.loads(text))


def encode(identity: Identity, key: bytes) -> Encoding:
    """The encoding of one identity under the gateway's secret key."""
    given = normalise.name_tokens(identity.given)
    family = normalise.name_tokens(identity.family)
    year, month, day = normalise.birth_date(identity.birth_date)
    sex = normalise.sex(identity.sex)
    place = normalise.name_tokens([identity.place_of_birth or ""])
    return Encoding(
        given=_bloom(key, b"given", given, NAME_BITS, NAME_HASHES),
        family=_bloom(key, b"family", family, NAME_BITS, NAME_HASHES),
        dob=_dob_tags(key, year, month, day),
        sex=None if sex is None else _tag(key, f"sex:{sex}"),
        place=_bloom(key, b"place", place, PLACE_BITS, PLACE_HASHES) if place else None,
        blocks=_blocks(key, given, family, year, month, day),
    )


def soundex(token: str) -> str:
    """Soundex of a folded token: coarse enough that most typos keep the same code."""
    letters = [c for c in token if "a" <= c <= "z"]
    if not letters:
        return ""
    codes = "".join(letters).translate(_SOUNDEX)
    out, last = letters[0], codes[0]
    for letter, code in zip(letters[1:], codes[1:], strict=True):
        if code.isdigit() and code != last:
            out += code
        if letter not in "hw":
            last = code
    return (out + "000")[:4]


def local_token(context_key: bytes, local_id: str) -> str:
    """Keyed and deterministic: the service can test equality, nobody can reverse it."""
    return hmac.new(context_key, b"local:" + local_id.encode(), hashlib.sha256).hexdigest()[:32]


def seal_local_id(context_key: bytes, local_id: str) -> str:
    """AES-GCM under a key derived from the context's key: only that context can open it."""
    nonce = os.urandom(12)
    sealed = AESGCM(_seal_key(context_key)).encrypt(nonce, local_id.encode(), SEAL_CONTEXT)
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def open_local_id(context_key: bytes, sealed: str) -> str:
    """Raises cryptography's InvalidTag for a wrong key or a tampered value."""
    raw = base64.urlsafe_b64decode(sealed.encode())
    return AESGCM(_seal_key(context_key)).decrypt(raw[:12], raw[12:], SEAL_CONTEXT).decode()


def _seal_key(context_key: bytes) -> bytes:
    return hmac.new(context_key, b"seal", hashlib.sha256).digest()


def _tag(key: bytes, text: str) -> int:
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:TAG_BYTES], "big")


def _bloom(key: bytes, field: bytes, tokens: tuple[str, ...], bits: int, hashes: int) -> int:
    field_key = hmac.new(key, b"field:" + field, hashlib.sha256).digest()
    grams = {f"{a}{b}" for token in tokens for a, b in zip(f"_{token}", f"{token}_", strict=True)}
    grams.update("#" + "".join(sorted(token)) for token in tokens)  # survives a transposition
    value = 0
    for gram in grams:
        digest = hmac.new(field_key, gram.encode(), hashlib.sha256).digest()
        h1 = int.from_bytes(digest[:8], "big")
        h2 = int.from_bytes(digest[8:16], "big") | 1
        for i in range(hashes):
            value |= 1 << ((h1 + i * h2) % bits)
    return value


def _dob_tags(
    key: bytes, year: str | None, month: str | None, day: str | None
) -> tuple[int | None, ...]:
    year_tags = [_tag(key, f"y{i}:{d}") for i, d in enumerate(year)] if year else [None] * 4
    pair_tags = [
        [_tag(key, f"md{i}:{d}") for i, d in enumerate(p)] if p else [None] * 2
        for p in (month, day)
    ]
    return (*year_tags, *pair_tags[0], *pair_tags[1])


def _blocks(
    key: bytes,
    given: tuple[str, ...],
    family: tuple[str, ...],
    year: str | None,
    month: str | None,
    day: str | None,
) -> tuple[str, ...]:
    giv = [soundex(t) for t in given[:2]]
    fam = [soundex(t) for t in family[:2]]
    plain = []
    if year and month and day:
        plain.append(f"dob|{year}{month}{day}")
    if year:
        plain += [f"fy|{f}|{year}" for f in fam] + [f"gy|{g}|{year}" for g in giv]
    if month and day:
        plain += [f"fmd|{f}|{min(month, day)}{max(month, day)}" for f in fam[:1]]
    plain += [f"fg|{f}|{g}" for f in fam[:1] for g in giv[:1]]
    block_key = hmac.new(key, b"blocks", hashlib.sha256).digest()
    return tuple(
        sorted(
            {
                hmac.new(block_key, p.encode(), hashlib.sha256).hexdigest()[: 2 * BLOCK_BYTES]
                for p in plain
            }
        )
    )


def _b64(value: int, bits: int) -> str:
    return base64.b64encode(value.to_bytes(bits // 8, "big")).decode()


def _unb64(text: str) -> int:
    return int.from_bytes(base64.b64decode(text, validate=True), "big")
