"""Pseudonyms such as PRM-7K3Q-9XW2-C: Crockford base32 body from an HMAC, one check char.

The body is HMAC-SHA256(service secret, seed) in Crockford base32 (no I, L, O, U: nothing
to misread), so it is deterministic for the same seed and unguessable without the secret.
The check character is the body read as a polynomial over GF(32) evaluated at x (Horner,
modulus x^5 + x^2 + 1), times x. Because every weight x^i is non-zero and the powers of x
are distinct for up to 31 positions, it detects every single-character substitution and
every transposition of two characters (adjacent or not) within the body, which a
Luhn-style mod-N check does not.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_MODULUS = 0b100101  # x^5 + x^2 + 1, irreducible over GF(2)


@dataclass(frozen=True, slots=True)
class PseudonymFormat:
    """`prefix`, then `groups` groups of `group` characters, then the check, joined by `sep`."""

    prefix: str = "PRM"
    groups: int = 2
    group: int = 4
    sep: str = "-"

    def __post_init__(self) -> None:
        if not 1 <= self.groups * self.group <= 30:
            raise ValueError("a pseudonym body has 1 to 30 characters")

    def make(self, secret: bytes, seed: str) -> str:
        digest = int.from_bytes(hmac.new(secret, seed.encode(), hashlib.sha256).digest(), "big")
        body = "".join(ALPHABET[(digest >> (5 * i)) & 31] for i in range(self.groups * self.group))
        chunks = [body[i : i + self.group] for i in range(0, len(body), self.group)]
        return self.sep.join([p for p in (self.prefix,) if p] + chunks + [check_char(body)])

    def valid(self, pseudonym: str) -> bool:
        """Right shape, prefix and check character (case-insensitive)."""
        parts = pseudonym.upper().split(self.sep) if self.sep else [pseudonym.upper()]
        if self.prefix:
            if not parts or parts[0] != self.prefix.upper():
                return False
            parts = parts[1:]
        body = "".join(parts)
        if len(body) != self.groups * self.group + 1 or any(c not in _VALUE for c in body):
            return False
        return _horner(body) == 0


def check_char(body: str) -> str:
    return ALPHABET[_mul(_horner(body), 2)]


def _horner(chars: str) -> int:
    acc = 0
    for c in chars:
        acc = _mul(acc, 2) ^ _VALUE[c]
    return acc


def _mul(a: int, b: int) -> int:
    """Multiplication in GF(32)."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
        if a & 32:
            a ^= _MODULUS
    return out
