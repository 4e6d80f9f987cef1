"""The server's token-signing keys: RSA, in the database so every worker and host shares
them, private parts encrypted with the server secret.

The newest key signs. After a rotation the previous keys stay in the JWKS until every
token they signed has expired (plus the refresh interval, for workers that had not yet
seen the new key), so clients never meet a token they cannot verify.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography.fernet import Fernet
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import insert, select

from fhir_server.repository import Repository

from .schema import oauth_key

ALGORITHM = "RS256"
REFRESH_SECONDS = 60


class KeyRing:
    def __init__(
        self,
        read: Callable[[], AbstractContextManager[Repository]],
        write: Callable[[], AbstractContextManager[Repository]],
        secret: bytes,
        token_lifetime: int,
    ) -> None:
        self._read, self._write = read, write
        key = base64.urlsafe_b64encode(hashlib.sha256(b"primage-oauth-keys\0" + secret).digest())
        self._fernet = Fernet(key)
        self._lifetime = token_lifetime
        self._lock = threading.Lock()
        self._keys: list[tuple[datetime, RSAKey]] = []  # oldest first
        self._loaded = 0.0

    def signing_key(self) -> RSAKey:
        keys = self._current()
        if not keys:
            self.rotate()
            keys = self._current(force=True)
        return keys[-1][1]

    def verification_keys(self, kid: str | None = None) -> KeySet:
        """Keys that may have signed a live token; reloads once if `kid` is unknown."""
        keys = self._current()
        unknown = kid is not None and all(k.kid != kid for _, k in keys)
        # a new key appears at most this often: random kids must not force database reads
        if unknown and time.monotonic() - self._loaded > 5:
            keys = self._current(force=True)
        return KeySet([k for _, k in keys])

    def public_jwks(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        self.signing_key()  # a fresh server publishes the key it is about to sign with
        keys = self._current()
        grace = timedelta(seconds=self._lifetime + REFRESH_SECONDS)
        published = [
            key
            for index, (_, key) in enumerate(keys)
            if index == len(keys) - 1 or keys[index + 1][0] + grace > now
        ]
        return {
            "keys": [
                {**k.as_dict(private=False), "use": "sig", "alg": ALGORITHM} for k in published
            ]
        }

    def rotate(self) -> str:
        """Adds a new signing key (the CLI's `primage keys rotate`); returns its kid."""
        kid = uuid.uuid4().hex
        key = RSAKey.generate_key(2048, parameters={"kid": kid})
        with self._write() as repo:
            repo.conn.execute(
                insert(oauth_key).values(
                    kid=kid,
                    created=datetime.now(UTC),
                    private_jwk=self._fernet.encrypt(orjson.dumps(key.as_dict(private=True))),
                )
            )
        self._loaded = 0.0
        return kid

    def _current(self, *, force: bool = False) -> list[tuple[datetime, RSAKey]]:
        with self._lock:
            if force or time.monotonic() - self._loaded > REFRESH_SECONDS or not self._keys:
                with self._read() as repo:
                    rows = repo.conn.execute(
                        select(oauth_key.c.created, oauth_key.c.private_jwk).order_by(
                            oauth_key.c.created
                        )
                    ).all()
                self._keys = [
                    (created, RSAKey.import_key(orjson.loads(self._fernet.decrypt(blob))))
                    for created, blob in rows
                ]
                self._loaded = time.monotonic()
            return list(self._keys)
