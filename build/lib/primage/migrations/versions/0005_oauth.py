"""Authorization server: clients, signing keys, revoked tokens, seen client assertions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.schema import PK, UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_client",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("secret_hash", sa.String(255)),
        sa.Column("jwks", sa.Text),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("site", sa.String(64)),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created", UtcDateTime, nullable=False),
    )
    op.create_table(
        "oauth_key",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("created", UtcDateTime, nullable=False),
        sa.Column("private_jwk", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "oauth_revoked",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("revoked", UtcDateTime, nullable=False),
        sa.Column("expires", UtcDateTime, nullable=False),
    )
    op.create_index("ix_oauth_revoked_revoked", "oauth_revoked", ["revoked"])
    op.create_table(
        "oauth_assertion",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("oauth_assertion", "oauth_revoked", "oauth_key", "oauth_client"):
        op.drop_table(table)
