"""Fill extended query tags for instances stored before the tags were configured.

A resumable job like the FHIR search reindex: batches of instances in pk order, values read
from the stored metadata (no file is opened), each batch committed with its checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import orjson
from sqlalchemy import Connection, delete, func, insert, select

from fhir_server.reindex import Progress, run_job
from fhir_server.repository import Repository

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

    def step(conn: Connection, position: int) -> tuple[int, int] | None:
        rows = conn.execute(
            select(dicom_instance.c.pk, dicom_instance.c.metadata)
            .where(dicom_instance.c.pk > position)
            .order_by(dicom_instance.c.pk)
            .limit(batch)
        ).all()
        if not rows:
            return None
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
        return pks[-1], len(rows)

    return run_job(write, "dicom-tags", spec, count, step)
