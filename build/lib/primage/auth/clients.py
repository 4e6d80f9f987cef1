"""Registered OAuth2 clients: created and managed with the CLI, read by the token endpoint.

A client authenticates with a generated secret (shown once; stored as its SHA-256: the
secret is 256 random bits, so a slow password hash would add nothing but latency) or, for
SMART Backend Services, with JWTs signed by a key in its registered JWKS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from joserfc.jwk import KeySet
from sqlalchemy import insert, select, update

from fhir_server.repository import Repository

from . import scopes as smart
from .schema import oauth_client


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    scopes: tuple[str, ...]
    site: str | None
    disabled: bool
    secret_hash: str | None
    jwks: dict[str, Any] | None

    def check_secret(self, secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return hmac.compare_digest(self.secret_hash, _hash(secret))

    def key_set(self) -> KeySet | None:
        return KeySet.import_key_set(self.jwks) if self.jwks else None  # type: ignore[arg-type]

    def public(self) -> dict[str, Any]:
        """What `primage clients list` shows: never a secret or its hash."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "scope": " ".join(self.scopes),
            "site": self.site,
            "disabled": self.disabled,
            "auth": "private_key_jwt" if self.jwks else "client_secret",
        }


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Clients:
    def __init__(
        self,
        read: Callable[[], AbstractContextManager[Repository]],
        write: Callable[[], AbstractContextManager[Repository]],
    ) -> None:
        self._read, self._write = read, write

    def add(
        self, name: str, scope: str, site: str | None = None, jwks: dict[str, Any] | None = None
    ) -> tuple[Client, str | None]:
        """Registers a client; returns it and its secret (None when it uses a JWKS)."""
        requested = scope.split()
        for text in requested:
            if smart.parse(text) is None and text not in smart.EXTRA:
                raise ValueError(f"Unknown scope {text!r}")
        if jwks is not None:
            KeySet.import_key_set(jwks)  # type: ignore[arg-type]  # refuse a malformed JWKS now
            if not jwks.get("keys"):
                raise ValueError("The JWKS has no keys")
        secret = None if jwks else secrets.token_urlsafe(32)
        client_id = uuid.uuid4().hex
        with self._write() as repo:
            repo.conn.execute(
                insert(oauth_client).values(
                    client_id=client_id,
                    name=name,
                    secret_hash=_hash(secret) if secret else None,
                    jwks=orjson.dumps(jwks).decode() if jwks else None,
                    scope=" ".join(requested),
                    site=site,
                    disabled=False,
                    created=datetime.now(UTC),
                )
            )
        found = self.get(client_id)
        assert found is not None
        return found, secret

    def get(self, client_id: str) -> Client | None:
        with self._read() as repo:
            row = repo.conn.execute(
                select(oauth_client).where(oauth_client.c.client_id == client_id)
            ).first()
        return _client(row) if row else None

    def all(self) -> list[Client]:
        with self._read() as repo:
            rows = repo.conn.execute(select(oauth_client).order_by(oauth_client.c.pk)).all()
        return [_client(r) for r in rows]

    def disable(self, client_id: str) -> bool:
        with self._write() as repo:
            done = repo.conn.execute(
                update(oauth_client)
                .where(oauth_client.c.client_id == client_id)
                .values(disabled=True)
            )
        return bool(done.rowcount)

    def rotate_secret(self, client_id: str) -> str | None:
        """A new secret for a secret-based client (the old one stops working at once)."""
        client = self.get(client_id)
        if client is None or client.jwks:
            return None
        secret = secrets.token_urlsafe(32)
        with self._write() as repo:
            repo.conn.execute(
                update(oauth_client)
                .where(oauth_client.c.client_id == client_id)
                .values(secret_hash=_hash(secret))
            )
        return secret


def _client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        name=row.name,
        scopes=tuple(row.scope.split()),
        site=row.site,
        disabled=row.disabled,
        secret_hash=row.secret_hash,
        jwks=orjson.loads(row.jwks) if row.jwks else None,
    )
