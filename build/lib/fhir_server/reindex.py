"""Rebuild search-index rows from stored resources: a resumable job.

Used after adding a SearchParameter, or after a bulk load with indexing off. Work goes in
batches of resources in pk order; each batch's index rows and the job's checkpoint commit
together, so a job stopped at any point resumes from its last batch when started again
with the same arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from . import jsonio
from .bulk import insert_all
from .indexing import Indexer
from .repository import Repository, with_current
from .schema import INDEX_TABLES, job, resource, resource_version


@dataclass(frozen=True)
class Progress:
    done: int
    total: int


Step = Callable[[Connection, int], "tuple[int, int] | None"]


def reindex(
    write: Callable[[], AbstractContextManager[Repository]],
    indexer: Indexer,
    *,
    types: tuple[str, ...] = (),
    params: tuple[str, ...] = (),
    batch: int = 500,
) -> Iterator[Progress]:
    """Yields progress after each committed batch; resumes an unfinished identical job."""
    spec = json.dumps({"types": sorted(types), "params": sorted(params)}, sort_keys=True)
    count = select(func.count()).select_from(resource).where(resource.c.deleted.is_(False))
    if types:
        count = count.where(resource.c.type.in_(types))

    def step(conn: Connection, position: int) -> tuple[int, int] | None:
        query = (
            select(resource.c.pk, resource_version.c.content)
            .select_from(with_current(resource))
            .where(resource.c.pk > position, resource.c.deleted.is_(False))
            .order_by(resource.c.pk)
            .limit(batch)
        )
        if types:
            query = query.where(resource.c.type.in_(types))
        rows = conn.execute(query).all()
        if not rows:
            return None
        pks = [row[0] for row in rows]
        for table in INDEX_TABLES.values():
            clear = delete(table).where(table.c.resource_pk.in_(pks))
            if params:
                clear = clear.where(table.c.param.in_(params))
            conn.execute(clear)
        batches: dict[str, list[dict[str, Any]]] = {}
        for pk, content in rows:
            for kind, index_rows in indexer.rows(jsonio.loads(content)).items():
                batches.setdefault(kind, []).extend(
                    {"resource_pk": pk, **r}
                    for r in index_rows
                    if not params or r["param"] in params
                )
        insert_all(conn, [(INDEX_TABLES[k], r) for k, r in batches.items()])
        return pks[-1], len(rows)

    return run_job(write, "reindex", spec, count, step)


def run_job(
    write: Callable[[], AbstractContextManager[Repository]],
    kind: str,
    spec: str,
    count: Any,
    step: Step,
) -> Iterator[Progress]:
    """Runs (or resumes) a job in batches: `step(conn, position)` does the batch after
    `position` and returns (its last pk, how many it did), or None when none is left; its
    work and the job's checkpoint commit together."""
    job_pk, position, done, total = start_job(write, kind, spec, count)
    yield Progress(done, total)
    while True:
        with write() as repo:
            result = step(repo.conn, position)
            if result is None:
                repo.conn.execute(update(job).where(job.c.pk == job_pk).values(status="done"))
                return
            position, done = result[0], done + result[1]
            repo.conn.execute(
                update(job)
                .where(job.c.pk == job_pk)
                .values(position=position, done=done, updated=datetime.now(UTC))
            )
        yield Progress(done, total)


def start_job(
    write: Callable[[], AbstractContextManager[Repository]], kind: str, spec: str, count: Any
) -> tuple[int, int, int, int]:
    """(job pk, position, done, total) of the running `kind` job with this spec, or of a new
    one whose total is the `count` query's result."""
    with write() as repo:
        conn = repo.conn
        found = conn.execute(
            select(job.c.pk, job.c.position, job.c.done, job.c.total).where(
                job.c.kind == kind, job.c.spec == spec, job.c.status == "running"
            )
        ).first()
        if found:
            return found[0], found[1], found[2], found[3]
        total = int(conn.execute(count).scalar_one())
        pk = conn.execute(
            insert(job)
            .values(
                kind=kind,
                spec=spec,
                status="running",
                position=0,
                done=0,
                total=total,
                updated=datetime.now(UTC),
            )
            .returning(job.c.pk)
        ).scalar_one()
        return pk, 0, 0, total
