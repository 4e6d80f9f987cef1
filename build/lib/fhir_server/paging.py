"""Opaque, tamper-proof paging tokens.

Search values can be sensitive (identifiers, pseudonyms), so `next` links carry an encrypted
and authenticated token instead of the query: a client can follow it, not read or forge it.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken

from .errors import InvalidRequest


class PageTokens:
    def __init__(self, secret: bytes, ttl_seconds: int = 24 * 3600) -> None:
        key = base64.urlsafe_b64encode(hashlib.sha256(b"primage-paging\0" + secret).digest())
        self._fernet = Fernet(key)
        self._ttl = ttl_seconds

    def encode(self, state: dict[str, Any]) -> str:
        return self._fernet.encrypt(orjson.dumps(state)).decode("ascii")

    def decode(self, token: str) -> dict[str, Any]:
        try:
            state = orjson.loads(self._fernet.decrypt(token.encode("ascii"), ttl=self._ttl))
        except (InvalidToken, UnicodeEncodeError, orjson.JSONDecodeError):
            raise InvalidRequest("Invalid or expired paging link", ("_page",)) from None
        if not isinstance(state, dict):
            raise InvalidRequest("Invalid paging link", ("_page",))
        return state
