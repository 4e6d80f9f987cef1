"""Access tokens (RFC 9068-style JWTs) and client assertions (RFC 7523, SMART Backend
Services): issuing, validating, revoking, and refusing replays.

    InvalidToken    a bearer token that is malformed, forged, expired, revoked, or for
                    another issuer or audience -> 401 at the resource server
    InvalidClient   client authentication failed -> 401 invalid_client at the token endpoint
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from fhir_server.repository import Repository

from .clients import Client
from .keys import ALGORITHM, KeyRing
from .schema import oauth_assertion, oauth_client, oauth_revoked
from .scopes import Grant, narrowed

ASSERTION_ALGORITHMS = ("RS384", "ES384")  # SMART Backend Services
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300  # SMART: exp no more than five minutes in the future
LEEWAY = 30


class InvalidToken(Exception):
    pass


class InvalidClient(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    """Who is calling, from a validated access token, with its scopes parsed once."""

    client_id: str
    scopes: tuple[str, ...]
    site: str | None
    jti: str
    expires: int
    grant: Grant = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grant", Grant(self.scopes))


Session = Callable[[], AbstractContextManager[Repository]]


@dataclass(frozen=True)
class ExternalIssuer:
    """An OpenID Connect provider whose access tokens are accepted too (a hospital's
    Keycloak, say): its issuer, its JWKS, the audience its tokens must name for primage,
    and the claims that carry the site and the scopes."""

    issuer: str
    jwks: dict[str, Any]
    audience: str
    site_claim: str = "site"
    scope_claim: str = "scope"
    allowed_scopes: tuple[str, ...] = ("system/*.rs",)  # the most its tokens can grant
    require_site: bool = True  # a token without the site claim would see every site
    algorithms: tuple[str, ...] = ("RS256", "RS384", "ES256", "ES384")

    def principal(self, token: str) -> Principal:
        decoded = verified(
            token,
            KeySet.import_key_set(self.jwks),  # type: ignore[arg-type]
            self.algorithms,
            InvalidToken("The access token is not valid"),
            iss=self.issuer,
            aud=self.audience,
            exp=None,
            sub=None,
        )
        claims = decoded.claims
        raw = claims.get(self.scope_claim, "")
        requested = raw.split() if isinstance(raw, str) else [str(s) for s in raw]
        site = claims.get(self.site_claim)
        if site is None and self.require_site:
            raise InvalidToken(f"The token has no {self.site_claim} claim")
        try:
            scopes = narrowed(requested, list(self.allowed_scopes))
        except ValueError as exc:
            raise InvalidToken("The token's scopes are malformed") from exc
        return Principal(
            client_id=str(claims.get("azp") or claims.get("client_id") or claims["sub"]),
            scopes=tuple(scopes),
            site=str(site) if site is not None else None,
            jti=str(claims.get("jti") or f"{self.issuer}#{claims['sub']}#{claims['exp']}"),
            expires=int(claims["exp"]),
        )


def verified(
    token: str,
    keys: Any,
    algorithms: tuple[str, ...],
    error: Exception,
    **claims: str | None,
) -> Any:
    """A JWT whose signature (by `keys`, with one of `algorithms`) and essential claims
    check out: each of `claims` must be present and, unless None, equal that value.
    Anything wrong raises `error`, with the kind of fault appended."""
    options = {
        name: {"essential": True, **({"value": value} if value is not None else {})}
        for name, value in claims.items()
    }
    try:
        decoded = jwt.decode(token, keys, algorithms=list(algorithms))
        JWTClaimsRegistry(leeway=LEEWAY, **options).validate(decoded.claims)
    except (JoseError, ValueError, TypeError) as exc:
        raise type(error)(f"{error} ({type(exc).__name__})") from exc
    return decoded


def _issuer_of(token: str) -> str | None:
    """The unverified iss of a JWT, only to pick the keys that then verify it."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return claims.get("iss") if isinstance(claims, dict) else None
    except (IndexError, ValueError, binascii.Error):
        return None


class Revocations:
    """Revoked jtis, shared through the database. Each worker re-reads the live ones (not yet
    expired: a handful, since tokens live minutes) at most once a second, so a revocation
    takes effect everywhere within about a second, whatever the hosts' clocks say."""

    def __init__(self, read: Session, write: Session, interval: float = 1.0) -> None:
        self._read, self._write = read, write
        self._interval = interval
        self._live: frozenset[str] = frozenset()
        self._disabled: frozenset[str] = frozenset()  # clients whose tokens stop working
        self._checked = 0.0
        self._lock = threading.Lock()

    def revoke(self, jti: str, expires: int) -> None:
        now = datetime.now(UTC)
        with self._write() as repo:
            repo.conn.execute(delete(oauth_revoked).where(oauth_revoked.c.expires < now))
            found = repo.conn.execute(
                select(oauth_revoked.c.jti).where(oauth_revoked.c.jti == jti)
            ).first()
            if found is None:
                repo.conn.execute(
                    insert(oauth_revoked).values(
                        jti=jti,
                        revoked=now,
                        expires=datetime.fromtimestamp(expires + LEEWAY, UTC),
                    )
                )
        self._checked = 0.0

    def is_revoked(self, jti: str, client_id: str | None = None) -> bool:
        if time.monotonic() - self._checked > self._interval:
            self.refresh()
        return jti in self._live or client_id in self._disabled

    def refresh(self) -> None:
        """Re-read the live revocations and disabled clients (done at most once a second)."""
        with self._lock:
            with self._read() as repo:
                live = repo.conn.execute(
                    select(oauth_revoked.c.jti).where(
                        oauth_revoked.c.expires >= datetime.now(UTC) - timedelta(seconds=60)
                    )
                ).scalars()
                self._live = frozenset(live)
                disabled = repo.conn.execute(
                    select(oauth_client.c.client_id).where(oauth_client.c.disabled.is_(True))
                ).scalars()
                self._disabled = frozenset(disabled)
            self._checked = time.monotonic()


class Tokens:
    def __init__(
        self,
        keys: KeyRing,
        revocations: Revocations,
        write: Session,
        lifetime: int = 300,
    ) -> None:
        self.keys = keys
        self.revocations = revocations
        self._write = write
        self.lifetime = lifetime
        self._valid: dict[tuple[str, str], Principal] = {}  # (issuer, token) -> principal
        self.external: ExternalIssuer | None = None

    def issue(self, client: Client, scopes: list[str], issuer: str) -> tuple[str, int]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": client.client_id,
            "aud": issuer,
            "client_id": client.client_id,
            "scope": " ".join(scopes),
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        if client.site:
            claims["site"] = client.site
        key = self.keys.signing_key()
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": "at+jwt"}
        return jwt.encode(header, claims, key, algorithms=[ALGORITHM]), self.lifetime

    def validate(self, token: str, issuer: str) -> Principal:
        """The principal of a valid token for this issuer; InvalidToken otherwise."""
        known = self._valid.get((issuer, token))
        if known is None:
            known = self._decode(token, issuer)
            if len(self._valid) > 10_000:
                self._valid.clear()
            self._valid[(issuer, token)] = known
        if known.expires + LEEWAY < time.time():
            raise InvalidToken("The access token has expired")
        if self.revocations.is_revoked(known.jti, known.client_id):
            raise InvalidToken("The access token was revoked (or its client disabled)")
        return known

    def _decode(self, token: str, issuer: str) -> Principal:
        if self.external is not None and _issuer_of(token) == self.external.issuer:
            return self.external.principal(token)
        decoded = verified(
            token,
            lambda obj: self.keys.verification_keys(obj.headers().get("kid")),
            (ALGORITHM,),
            InvalidToken("The access token is not valid"),
            iss=issuer,
            aud=issuer,
            exp=None,
            jti=None,
            sub=None,
        )
        claims = decoded.claims
        if decoded.header.get("typ") != "at+jwt":
            raise InvalidToken("Not an access token")
        return Principal(
            client_id=str(claims["sub"]),
            scopes=tuple(str(claims.get("scope", "")).split()),
            site=claims.get("site"),
            jti=str(claims["jti"]),
            expires=int(claims["exp"]),
        )

    def check_assertion(self, assertion: str, client: Client, audiences: set[str]) -> None:
        """A SMART Backend Services client assertion: signed with one of the client's keys
        (RS384/ES384), iss = sub = client_id, aud = the token endpoint, exp at most five
        minutes ahead, and a jti never used before."""
        key_set = client.key_set()
        if key_set is None:
            raise InvalidClient("The client has no registered JWKS")
        decoded = verified(
            assertion,
            key_set,
            ASSERTION_ALGORITHMS,
            InvalidClient("The client assertion is not valid"),
            iss=client.client_id,
            sub=client.client_id,
            exp=None,
            jti=None,
        )
        claims = decoded.claims
        now = time.time()
        aud = claims.get("aud")
        if not (set(aud) if isinstance(aud, list) else {aud}) & audiences:
            raise InvalidClient("The client assertion's aud is not this token endpoint")
        expires = int(claims["exp"])
        if expires > now + MAX_ASSERTION_LIFETIME + LEEWAY:
            raise InvalidClient("The client assertion expires too far in the future")
        self._remember_jti(client.client_id, str(claims["jti"]), expires)

    def _remember_jti(self, client_id: str, jti: str, expires: int) -> None:
        try:
            with self._write() as repo:
                repo.conn.execute(
                    delete(oauth_assertion).where(oauth_assertion.c.expires < datetime.now(UTC))
                )
                repo.conn.execute(
                    insert(oauth_assertion).values(
                        client_id=client_id,
                        jti=jti[:255],
                        expires=datetime.fromtimestamp(expires + LEEWAY, UTC),
                    )
                )
        except IntegrityError:
            raise InvalidClient("The client assertion was used before (jti replay)") from None
