"""FHIR core: resources and their version history.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.schema import PK, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_updated", UtcDateTime, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.UniqueConstraint("type", "id", name="uq_resource_type_id"),
    )
    op.create_index("ix_resource_type_last_updated", "resource", ["type", "last_updated"])
    op.create_table(
        "resource_version",
        sa.Column("resource_pk", PK, sa.ForeignKey("resource.pk"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("last_updated", UtcDateTime, nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_resource_version_last_updated", "resource_version", ["last_updated"])
    op.create_index(
        "ix_resource_version_type_last_updated", "resource_version", ["type", "last_updated"]
    )


def downgrade() -> None:
    op.drop_table("resource_version")
    op.drop_table("resource")
