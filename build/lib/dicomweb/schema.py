"""The DICOM archive's index tables (same database and MetaData as the FHIR repository).

    dicom_study     one row per study: the patient/study attributes QIDO matches on, counts
    dicom_series    one row per series
    dicom_instance  one row per SOP instance: its blob key and its DICOM JSON metadata

`dicom_instance.metadata` is the instance's DICOM JSON (PS3.18 F.2) computed once at STOW
time, with bulk data as `BulkDataURI`s relative to a `{base}` placeholder; WADO-RS metadata
concatenates these rows instead of reading files. String attributes are kept as DICOM
encodes them; `*_key` columns hold the upper-cased, separator-free form used for
case-insensitive and fuzzy person-name matching.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
)

from fhir_server.schema import PK, UtcDateTime, metadata

dicom_study = Table(
    "dicom_study",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("patient_id", String(64)),
    Column("patient_name", String(324)),
    Column("patient_name_key", String(324)),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("study_date", String(8)),
    Column("study_time", String(16)),
    Column("accession_number", String(64)),
    Column("study_id", String(16)),
    Column("referring_physician_name", String(324)),
    Column("referring_physician_key", String(324)),
    Column("study_description", String(64)),
    Column("modalities", String(128)),  # backslash-separated, as ModalitiesInStudy
    Column("num_series", Integer, nullable=False),
    Column("num_instances", Integer, nullable=False),
    Column("patient_ref", String(64)),  # FHIR Patient id
    Column("site", String(64)),  # the uploading client's site; NULL: platform data
    Column("updated", UtcDateTime, nullable=False),
    Index("ix_dicom_study_patient_id", "patient_id"),
    Index("ix_dicom_study_patient_name_key", "patient_name_key"),
    Index("ix_dicom_study_study_date", "study_date"),
    Index("ix_dicom_study_accession", "accession_number"),
    Index("ix_dicom_study_site", "site"),
)

dicom_series = Table(
    "dicom_series",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("study_pk", PK, ForeignKey("dicom_study.pk"), nullable=False),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("body_part", String(16)),
    Column("pps_start_date", String(8)),
    Column("pps_start_time", String(16)),
    Column("num_instances", Integer, nullable=False),
    Index("ix_dicom_series_study", "study_pk"),
    Index("ix_dicom_series_modality", "modality"),
)

dicom_instance = Table(
    "dicom_instance",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("study_pk", PK, ForeignKey("dicom_study.pk"), nullable=False),
    Column("series_pk", PK, ForeignKey("dicom_series.pk"), nullable=False),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax", String(64), nullable=False),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    # Native little-endian pixel data: where it starts in the blob and how long one frame
    # is, so frames are read with one ranged read instead of parsing the file.
    Column("pixel_offset", BigInteger),
    Column("frame_length", BigInteger),
    Column("blob", String(64), nullable=False),  # SHA-256 of the Part 10 bytes
    Column("size", BigInteger, nullable=False),
    Column("metadata", LargeBinary, nullable=False),
    Column("stored", UtcDateTime, nullable=False),
    Index("ix_dicom_instance_series", "series_pk", "instance_number"),
    Index("ix_dicom_instance_study", "study_pk"),
)

# Extended query tags: values of further attributes, named in configuration, that QIDO can
# match on (filled at STOW time and by `primage dicom reindex`).
dicom_tag = Table(
    "dicom_tag",
    metadata,
    Column("instance_pk", PK, ForeignKey("dicom_instance.pk"), nullable=False),
    Column("tag", String(8), nullable=False),  # GGGGEEEE, as in DICOM JSON
    Column("value", String(255), nullable=False),
    Index("ix_dicom_tag_value", "tag", "value"),
    Index("ix_dicom_tag_instance", "instance_pk"),
)

DICOM_TABLES = (dicom_tag, dicom_instance, dicom_series, dicom_study)
