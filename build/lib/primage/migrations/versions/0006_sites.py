"""Site isolation: the uploading site of every resource and DICOM study.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource") as batch:
        batch.add_column(sa.Column("site", sa.String(64)))
        batch.create_index("ix_resource_type_site", ["type", "site"])
    with op.batch_alter_table("dicom_study") as batch:
        batch.add_column(sa.Column("site", sa.String(64)))
        batch.create_index("ix_dicom_study_site", ["site"])


def downgrade() -> None:
    with op.batch_alter_table("dicom_study") as batch:
        batch.drop_index("ix_dicom_study_site")
        batch.drop_column("site")
    with op.batch_alter_table("resource") as batch:
        batch.drop_index("ix_resource_type_site")
        batch.drop_column("site")
