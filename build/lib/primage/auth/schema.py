"""The authorization server's tables.

oauth_client     registered clients: a secret hash (argon2) or a JWKS, scopes, site
oauth_key        the server's token-signing keys (private JWK encrypted with the secret)
oauth_revoked    revoked access tokens by jti, kept until they would have expired
oauth_assertion  client-assertion jtis seen, kept until the assertion expires (replay)
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, LargeBinary, String, Table, Text

from fhir_server.schema import PK, UtcDateTime, metadata

audit_staging = Table(
    "audit_staging",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("site", String(64), nullable=False),
    Column("event", LargeBinary, nullable=False),  # the AuditEvent JSON
)

oauth_client = Table(
    "oauth_client",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("client_id", String(64), nullable=False, unique=True),
    Column("name", String(255), nullable=False),
    Column("secret_hash", String(255)),
    Column("jwks", Text),
    Column("scope", Text, nullable=False),
    Column("site", String(64)),
    Column("disabled", Boolean, nullable=False),
    Column("created", UtcDateTime, nullable=False),
)

oauth_key = Table(
    "oauth_key",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("created", UtcDateTime, nullable=False),
    Column("private_jwk", LargeBinary, nullable=False),
)

oauth_revoked = Table(
    "oauth_revoked",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("revoked", UtcDateTime, nullable=False),
    Column("expires", UtcDateTime, nullable=False),
    Index("ix_oauth_revoked_revoked", "revoked"),
)

oauth_assertion = Table(
    "oauth_assertion",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires", UtcDateTime, nullable=False),
)
