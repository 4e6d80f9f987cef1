"""An import's ledger: every item the source listed and what became of it.

A job is planned once (the source's listing, written as pending items) and then worked
until no item is pending; a killed importer resumes from the ledger, and an item stored by
an earlier job to the same destination is `present` without being sent again. The ledger
is the importer's own database (`PRIMAGE_IMPORT_DATABASE_URL`), not the platform's: it
keeps the source's identifiers (original UIDs, file paths) because resuming has to ask the
source for them again, so it belongs on the side that reads the source, usually the
hospital's edge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

# What became of an item: sent and stored; already on the platform (an earlier job stored
# it); held back by de-identification (burned-in text...); refused or unreachable.
PENDING, STORED, PRESENT, QUARANTINED, FAILED = (
    "pending",
    "stored",
    "present",
    "quarantined",
    "failed",
)
STATES = (PENDING, STORED, PRESENT, QUARANTINED, FAILED)
DONE = frozenset({STORED, PRESENT})

metadata = MetaData()
_ID = BigInteger().with_variant(Integer, "sqlite")

jobs_table = Table(
    "import_job",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),  # pacs | dicomweb | folder | clinical
    Column("spec", Text, nullable=False),  # JSON: the source and its selection
    Column("destination", String(512), nullable=False),
    Column("status", String(16), nullable=False),  # planning | running | done | incomplete
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
)

items_table = Table(
    "import_item",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("job_id", _ID, ForeignKey("import_job.id"), nullable=False),
    Column("key", String(128), nullable=False),  # SOP Instance UID, row number, ...
    Column("grp", String(128), nullable=False),  # what the source hands over together
    Column("locator", Text, nullable=False),  # how to ask the source for it again
    Column("size", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("updated", DateTime(timezone=True), nullable=False),
    UniqueConstraint("job_id", "key", name="uq_import_item_job_key"),
    Index("ix_import_item_job_state", "job_id", "state"),
    Index("ix_import_item_key_state", "key", "state"),
)


@dataclass(frozen=True)
class Listed:
    """One item as a source lists it."""

    key: str
    group: str
    locator: str
    size: int = 0


@dataclass(frozen=True)
class Item:
    key: str
    group: str
    locator: str
    size: int
    state: str
    reason: str | None


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    spec: dict[str, Any]
    destination: str
    status: str
    created: datetime
    updated: datetime


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def create(self, kind: str, spec: dict[str, Any], destination: str) -> Job:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            job_id = conn.execute(
                insert(jobs_table).values(
                    kind=kind,
                    spec=json.dumps(spec, sort_keys=True),
                    destination=destination,
                    status="planning",
                    created=now,
                    updated=now,
                )
            ).inserted_primary_key[0]
        return self.job(int(job_id))

    def job(self, job_id: int) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).first()
        if row is None:
            raise KeyError(job_id)
        return _job(row)

    def jobs(self) -> list[Job]:
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(select(jobs_table).order_by(jobs_table.c.id))]

    def set_status(self, job_id: int, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id)
                .values(status=status, updated=datetime.now(UTC))
            )

    def plan(self, job_id: int, listed: Iterable[Listed], chunk: int = 500) -> int:
        """Record the source's listing (again, on resume: items already known are kept).

        An item that an earlier job stored at the same destination starts `present`."""
        planned = 0
        batch: list[Listed] = []
        for item in listed:
            batch.append(item)
            if len(batch) >= chunk:
                planned += self._plan(job_id, batch)
                batch = []
        if batch:
            planned += self._plan(job_id, batch)
        return planned

    def _plan(self, job_id: int, batch: Sequence[Listed]) -> int:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            destination = conn.execute(
                select(jobs_table.c.destination).where(jobs_table.c.id == job_id)
            ).scalar_one()
            keys = [i.key for i in batch]
            known = set(
                conn.execute(
                    select(items_table.c.key).where(
                        items_table.c.job_id == job_id, items_table.c.key.in_(keys)
                    )
                ).scalars()
            )
            earlier = set(
                conn.execute(
                    select(items_table.c.key)
                    .join(jobs_table, jobs_table.c.id == items_table.c.job_id)
                    .where(
                        items_table.c.key.in_(keys),
                        items_table.c.state == STORED,
                        jobs_table.c.destination == destination,
                        jobs_table.c.id != job_id,
                    )
                ).scalars()
            )
            rows = [
                {
                    "job_id": job_id,
                    "key": i.key,
                    "grp": i.group,
                    "locator": i.locator,
                    "size": i.size,
                    "state": PRESENT if i.key in earlier else PENDING,
                    "reason": "stored by an earlier import" if i.key in earlier else None,
                    "attempts": 0,
                    "updated": now,
                }
                for i in {i.key: i for i in batch if i.key not in known}.values()
            ]
            if rows:
                conn.execute(insert(items_table), rows)
        return len(rows)

    def items(self, job_id: int, states: Sequence[str] = (PENDING,)) -> list[Item]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items_table)
                .where(items_table.c.job_id == job_id, items_table.c.state.in_(states))
                .order_by(items_table.c.grp, items_table.c.id)
            )
            return [Item(r.key, r.grp, r.locator, r.size, r.state, r.reason) for r in rows]

    def record(self, job_id: int, outcomes: Iterable[tuple[str, str, str | None]]) -> None:
        """(key, state, reason) for items that were tried."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            for key, state, reason in outcomes:
                conn.execute(
                    update(items_table)
                    .where(items_table.c.job_id == job_id, items_table.c.key == key)
                    .values(
                        state=state,
                        reason=reason,
                        attempts=items_table.c.attempts + 1,
                        updated=now,
                    )
                )
            conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(updated=now))

    def counts(self, job_id: int) -> dict[str, dict[str, int]]:
        """Per state: items and bytes."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    items_table.c.state,
                    func.count(),
                    func.coalesce(func.sum(items_table.c.size), 0),
                )
                .where(items_table.c.job_id == job_id)
                .group_by(items_table.c.state)
            ).all()
        out = {state: {"items": 0, "bytes": 0} for state in STATES}
        for state, count, size in rows:
            out[state] = {"items": int(count), "bytes": int(size)}
        return out

    def retry_failed(self, job_id: int) -> int:
        """Failed items back to pending (quarantined ones stay: sending again changes nothing)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(items_table)
                .where(items_table.c.job_id == job_id, items_table.c.state == FAILED)
                .values(state=PENDING, reason=None, updated=datetime.now(UTC))
            ).rowcount
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id)
                .values(status="running", updated=datetime.now(UTC))
            )
        return int(done)


def _job(row: Any) -> Job:
    return Job(
        int(row.id),
        row.kind,
        json.loads(row.spec),
        row.destination,
        row.status,
        row.created,
        row.updated,
    )
