"""DICOM archive index: study, series, instance, extended query tags.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.schema import PK, UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

S = sa.String


def upgrade() -> None:
    op.create_table(
        "dicom_study",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("study_uid", S(64), nullable=False, unique=True),
        sa.Column("patient_id", S(64)),
        sa.Column("patient_name", S(324)),
        sa.Column("patient_name_key", S(324)),
        sa.Column("patient_birth_date", S(8)),
        sa.Column("patient_sex", S(16)),
        sa.Column("study_date", S(8)),
        sa.Column("study_time", S(16)),
        sa.Column("accession_number", S(64)),
        sa.Column("study_id", S(16)),
        sa.Column("referring_physician_name", S(324)),
        sa.Column("referring_physician_key", S(324)),
        sa.Column("study_description", S(64)),
        sa.Column("modalities", S(128)),
        sa.Column("num_series", sa.Integer, nullable=False),
        sa.Column("num_instances", sa.Integer, nullable=False),
        sa.Column("patient_ref", S(64)),
        sa.Column("updated", UtcDateTime, nullable=False),
    )
    op.create_index("ix_dicom_study_patient_id", "dicom_study", ["patient_id"])
    op.create_index("ix_dicom_study_patient_name_key", "dicom_study", ["patient_name_key"])
    op.create_index("ix_dicom_study_study_date", "dicom_study", ["study_date"])
    op.create_index("ix_dicom_study_accession", "dicom_study", ["accession_number"])
    op.create_table(
        "dicom_series",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("study_pk", PK, sa.ForeignKey("dicom_study.pk"), nullable=False),
        sa.Column("series_uid", S(64), nullable=False, unique=True),
        sa.Column("modality", S(16)),
        sa.Column("series_number", sa.Integer),
        sa.Column("series_description", S(64)),
        sa.Column("body_part", S(16)),
        sa.Column("pps_start_date", S(8)),
        sa.Column("pps_start_time", S(16)),
        sa.Column("num_instances", sa.Integer, nullable=False),
    )
    op.create_index("ix_dicom_series_study", "dicom_series", ["study_pk"])
    op.create_index("ix_dicom_series_modality", "dicom_series", ["modality"])
    op.create_table(
        "dicom_instance",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("study_pk", PK, sa.ForeignKey("dicom_study.pk"), nullable=False),
        sa.Column("series_pk", PK, sa.ForeignKey("dicom_series.pk"), nullable=False),
        sa.Column("sop_uid", S(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", S(64), nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("transfer_syntax", S(64), nullable=False),
        sa.Column("rows", sa.Integer),
        sa.Column("columns", sa.Integer),
        sa.Column("bits_allocated", sa.Integer),
        sa.Column("number_of_frames", sa.Integer),
        sa.Column("pixel_offset", sa.BigInteger),
        sa.Column("frame_length", sa.BigInteger),
        sa.Column("blob", S(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.LargeBinary, nullable=False),
        sa.Column("stored", UtcDateTime, nullable=False),
    )
    op.create_index("ix_dicom_instance_series", "dicom_instance", ["series_pk", "instance_number"])
    op.create_index("ix_dicom_instance_study", "dicom_instance", ["study_pk"])
    op.create_table(
        "dicom_tag",
        sa.Column("instance_pk", PK, sa.ForeignKey("dicom_instance.pk"), nullable=False),
        sa.Column("tag", S(8), nullable=False),
        sa.Column("value", S(255), nullable=False),
    )
    op.create_index("ix_dicom_tag_value", "dicom_tag", ["tag", "value"])
    op.create_index("ix_dicom_tag_instance", "dicom_tag", ["instance_pk"])


def downgrade() -> None:
    for table in ("dicom_tag", "dicom_instance", "dicom_series", "dicom_study"):
        op.drop_table(table)
