"""Fill extended query tags for instances stored before the tags were configured.

A resumable job like the FHIR search reindex: batches of instances in pk order, values read
from the stored metadata (no file is opened), each batch committed with its checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime

import orjson
from sqlalchemy import delete, func, insert, select, update

from fhir_server.reindex import Progress, start_job
from fhir_server.repository import Repository
from fhir_server.schema import job

from .instance import tag_values
from .schema import dicom_instance, dicom_tag


def reindex_tags(
    write: Callable[[], AbstractContextManager[Repository]],
    tags: dict[str, str],
    *,
    batch: int = 500,
) -> Iterator[Progress]:
    spec = json.dumps({"tags": sorted(tags.values())})
    count = select(func.count()).select_from(dicom_instance)
    job_pk, position, done, total = start_job(write, "dicom-tags", spec, count)
    yield Progress(done, total)
    while True:
        with write() as repo:
            conn = repo.conn
            rows = conn.execute(
                select(dicom_instance.c.pk, dicom_instance.c.metadata)
                .where(dicom_instance.c.pk > position)
                .order_by(dicom_instance.c.pk)
                .limit(batch)
            ).all()
            if not rows:
                conn.execute(update(job).where(job.c.pk == job_pk).values(status="done"))
                return
            pks = [pk for pk, _ in rows]
            conn.execute(
                delete(dicom_tag).where(
                    dicom_tag.c.instance_pk.in_(pks), dicom_tag.c.tag.in_(list(tags.values()))
                )
            )
            values = [
                {"instance_pk": pk, "tag": tag, "value": value}
                for pk, document in rows
                for tag, value in tag_values(orjson.loads(document), tags.values()).items()
            ]
            if values:
                conn.execute(insert(dicom_tag), values)
            position, done = pks[-1], done + len(rows)
            conn.execute(
                update(job)
                .where(job.c.pk == job_pk)
                .values(position=position, done=done, updated=datetime.now(UTC))
            )
        yield Progress(done, total)
