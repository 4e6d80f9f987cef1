"""The FHIR repository's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

    resource          one row per logical resource: its current version and state
    resource_version  every version ever written, with the JSON exactly as served

`resource_version.content` holds the client's JSON with `id` and `meta` set by the server; a
read returns these bytes as they are. A delete writes a version with no content.
Search-index tables (issue: FHIR search) hang off `resource.pk`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
PK = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


resource = Table(
    "resource",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # The site whose client wrote it; NULL: platform data (definitions, terminology, what
    # an administrator wrote), readable by every site, writable by no site client.
    Column("site", String(64)),
    UniqueConstraint("type", "id", name="uq_resource_type_id"),
    Index("ix_resource_type_last_updated", "type", "last_updated"),
    Index("ix_resource_type_site", "type", "site"),
)

resource_version = Table(
    "resource_version",
    metadata,
    Column("resource_pk", PK, ForeignKey("resource.pk"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("method", String(8), nullable=False),
    Column("content", LargeBinary, nullable=True),
    Index("ix_resource_version_last_updated", "last_updated"),
    Index("ix_resource_version_type_last_updated", "type", "last_updated"),
)


# --- search index: one table per parameter type, rows for the current version only -------
# Each row: the resource (pk, and its type so an index can lead with it), the parameter code,
# and the value in the form its matching rules need (see docs in fhir_server/indexing.py).
# Equality indexes end with resource_pk, so a planner that probes per candidate resource
# (a nested-loop semi-join, likely before statistics exist) still does one index lookup.


def _index_table(name: str, *columns: Column[Any], indexes: tuple[Index, ...] = ()) -> Table:
    return Table(
        name,
        metadata,
        # No foreign key: the repository writes and deletes these rows in the same
        # transaction as the resource, and a per-row FK check doubled index ingest time.
        Column("resource_pk", PK, nullable=False, index=True),
        Column("type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        *indexes,
    )


search_token = _index_table(
    "search_token",
    Column("system", String(255)),
    Column("code", String(255)),
    Column("text", String(255)),  # normalised display / CodeableConcept.text, for :text
    indexes=(Index("ix_search_token_code", "type", "param", "code", "system", "resource_pk"),),
)
search_string = _index_table(
    "search_string",
    Column("value", String(255), nullable=False),  # normalised: lower case, no accents
    Column("exact", String(255), nullable=False),  # as written, for :exact
    indexes=(
        Index(
            "ix_search_string_value",
            "type",
            "param",
            "value",
            postgresql_ops={"value": "varchar_pattern_ops"},
        ),
    ),
)
search_date = _index_table(
    "search_date",
    Column("start", UtcDateTime, nullable=False),  # inclusive
    Column("end", UtcDateTime, nullable=False),  # exclusive
    indexes=(Index("ix_search_date", "type", "param", "start", "end"),),
)
search_number = _index_table(
    "search_number",
    Column("value", Float, nullable=False),
    indexes=(Index("ix_search_number", "type", "param", "value"),),
)
search_quantity = _index_table(
    "search_quantity",
    Column("value", Float, nullable=False),
    Column("system", String(255)),
    Column("code", String(255)),
    Column("unit", String(255)),
    indexes=(
        Index("ix_search_quantity", "type", "param", "code", "value"),
        # a code without a system also matches the unit: lets that OR use two index scans
        Index("ix_search_quantity_unit", "type", "param", "unit", "value"),
    ),
)
search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64)),
    Column("target_id", String(64)),
    Column("url", String(512)),  # absolute or canonical references
    indexes=(
        Index(
            "ix_search_reference_target",
            "type",
            "param",
            "target_id",
            "target_type",
            "resource_pk",
        ),
        Index("ix_search_reference_reverse", "target_type", "target_id"),
    ),
)
search_uri = _index_table(
    "search_uri",
    Column("value", String(512), nullable=False),
    indexes=(Index("ix_search_uri", "type", "param", "value", "resource_pk"),),
)

INDEX_TABLES = {
    "token": search_token,
    "string": search_string,
    "date": search_date,
    "number": search_number,
    "quantity": search_quantity,
    "reference": search_reference,
    "uri": search_uri,
}


# --- long jobs (search reindex, later imports): resumable from their checkpoint -----------
job = Table(
    "job",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("spec", String(1024), nullable=False),  # canonical JSON of the job's arguments
    Column("status", String(16), nullable=False),  # running | done
    Column("position", BigInteger, nullable=False),  # last resource pk processed
    Column("done", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("updated", UtcDateTime, nullable=False),
    Index("ix_job_kind_status", "kind", "status"),
)
