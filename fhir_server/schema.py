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
    UniqueConstraint("type", "id", name="uq_resource_type_id"),
    Index("ix_resource_type_last_updated", "type", "last_updated"),
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
