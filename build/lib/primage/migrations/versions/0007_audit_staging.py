"""Audit staging: queued AuditEvents, indexed later in batches.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.schema import PK

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_staging",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("event", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_staging")
