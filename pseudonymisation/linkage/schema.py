"""The linkage service's own database: never the platform's, which must not see it.

A person is the internal virtual person behind one research pseudonym; a merged person
keeps its row (merged_into) so old pseudonyms still resolve. Registrations are immutable
but for the person they point to. Blocking keys are the only lookup path for candidates.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Engine

metadata = MetaData()
_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only

persons = Table(
    "linkage_person",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("research_pseudonym", String(64), nullable=False, unique=True),
    Column("merged_into", _ID, ForeignKey("linkage_person.id"), nullable=True),
    Column("created", DateTime(timezone=True), nullable=False),
)

registrations = Table(
    "linkage_registration",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("context", String(128), nullable=False),
    Column("local_token", String(128), nullable=False),
    Column("sealed_local_id", Text, nullable=False),
    Column("encoding", Text, nullable=False),
    Column("person_id", _ID, ForeignKey("linkage_person.id"), nullable=False, index=True),
    Column("context_pseudonym", String(64), nullable=False, unique=True),
    Column("created", DateTime(timezone=True), nullable=False),
    UniqueConstraint("context", "local_token", name="uq_linkage_registration_local"),
)

blocking_keys = Table(
    "linkage_block",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("registration_id", _ID, ForeignKey("linkage_registration.id"), primary_key=True),
)

reviews = Table(
    "linkage_review",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # match (keep apart now) | split (together now)
    Column("registration_id", _ID, ForeignKey("linkage_registration.id"), nullable=False),
    Column("person_id", _ID, ForeignKey("linkage_person.id"), nullable=False),
    Column("score", Float, nullable=False),
    Column("status", String(16), nullable=False),  # open | merged | separated
    Column("created", DateTime(timezone=True), nullable=False),
    Column("resolved_by", String(256)),
    Column("resolved_at", DateTime(timezone=True)),
    Index("ix_linkage_review_status", "status", "id"),
)

changes = Table(
    "linkage_change",
    metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # merge | split
    Column("old_pseudonym", String(64), nullable=False),
    Column("new_pseudonym", String(64), nullable=False),
    Column("context", String(128)),  # split: only this context's resources move
    Column("context_pseudonym", String(64)),
    Column("created", DateTime(timezone=True), nullable=False),
)

audit = Table(
    "linkage_audit",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("action", String(32), nullable=False),  # reidentify | resolve
    Column("actor", String(256), nullable=False),
    Column("context", String(128)),
    Column("target", String(128), nullable=False),
    Column("outcome", String(32), nullable=False),  # granted | denied | not-found | merged ...
    Column("created", DateTime(timezone=True), nullable=False),
)


def create_schema(engine: Engine) -> None:
    metadata.create_all(engine)
